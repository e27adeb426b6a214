from flask import Flask
from flask_jpulse_ws import JPulseWS

app = Flask(__name__)
ws = JPulseWS(app)
rooms = ws.namespace("/api/1/ws/rooms/:room", presence=True)


@rooms.on_connect
def joined(conn):
    conn.set_presence_info({"status": "online"})  # JSON, at most 1 KiB


@rooms.on_message
def message(conn):
    if conn.message["type"] == "away":
        conn.set_presence_info({"status": "away"})  # others get an "updated" batch
    elif conn.message["type"] == "count":
        conn.reply(rooms.presence_stats(conn.ctx))  # {"clients": n, "users": m}
