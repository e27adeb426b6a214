"""The pure core: computes and never waits; imports neither Flask, gevent nor redis."""
