"""Settings for the test apps: every ``JPULSE_WS_*`` environment variable, JSON-decoded.

tests/servers.py passes a module's SETTINGS this way, so one app serves many tunings.
"""

import json
import os


def settings_from_env(app):
    for key, value in os.environ.items():
        if key.startswith("JPULSE_WS_"):
            app.config[key] = json.loads(value)
