"""What must reach other processes (Redis); never imports server/ or the extension."""
