from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
for line in (here / "flask_jpulse_ws" / "__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        exec(line, version)

setup(
    name="flask-jpulse-ws",
    version=version["__version__"],
    description="Real-time WebSocket namespaces for Flask: rooms, auth, limits, "
                "health, stats and Redis fan-out across gevent workers",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["flask_jpulse_ws", "flask_jpulse_ws.*"]),
    package_data={"flask_jpulse_ws": ["py.typed", "static/*.js", "admin/templates/*",
                                      "admin/static/*"]},
    python_requires=">=3.9",
    install_requires=[
        "flask>=2.3",
        "flask-login>=0.6",
        "gevent>=23.9",
        "redis>=5.0",
        # orjson: 5-10x faster JSON than the standard library on our hot path
        # (encode once per broadcast, decode every inbound frame).
        "orjson>=3.9",
        # hiredis: the relay's subscriber parses every message a read brings in C
        # (cluster/subscriber.py); redis-py's own pub/sub path cost 140-190 us a message.
        "hiredis>=2.0",
        # websockets: only its C mask (websockets.speedups.apply_mask) for the frames
        # clients send, 6x faster than our Python XOR on a short frame, 80x on 64 KiB.
        "websockets>=10.0",
    ],
    extras_require={
        # gunicorn's gevent worker needs "packaging", which only this extra installs.
        "gunicorn": ["gunicorn[gevent]>=22"],
        # what `make run` installs for the demo (example_app/), and nothing more
        "demo": ["gunicorn[gevent]>=22", "flask-sqlalchemy>=3.1"],
        # JPULSE_WS_METRICS_URL: the Prometheus text format (docs/metrics.md)
        "metrics": ["prometheus-client>=0.17"],
    },
    classifiers=[
        "Framework :: Flask",
        "Programming Language :: Python :: 3",
        "Topic :: Internet :: WWW/HTTP :: Dynamic Content",
    ],
)
