"""Installs the eventbus package and its `eventbus` command line."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="eventbus",
    version="0.1.0",
    description="A Tornado-integrated event bus on RabbitMQ, after Zulip's queue system",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["eventbus", "eventbus.*"]),
    package_data={"eventbus.web": ["static/*", "static/**/*"]},
    install_requires=[
        # Pinned to the minor releases the fast paths were written for: eventbus/tornado_events/websocket.py
        # writes to the websocket's stream, eventbus/queue/frames.py replaces two methods of pika's Connection
        # (tests/test_library_internals.py says what changed when a newer release breaks them).
        "tornado>=6.4,<6.7",
        # pika 2.0 deprecates TornadoConnection and BlockingConnection.
        "pika>=1.3.2,<1.5",
        "ujson>=5",
        "prometheus-client>=0.17",
        # Markdown rendering: GitHub's cmark-gfm, in C.
        "cmarkgfm>=2024.1",
        "cffi>=1.15",  # to free what cmark-gfm allocates (eventbus.processors.markdown)
        "emoji>=2.10",  # emoji names and code points for :name: in messages (Unicode's CLDR data)
        # The email mirror's SMTP receiver.
        "aiosmtpd>=1.4",
        # The stores: one schema and one set of queries for SQLite and PostgreSQL (eventbus/database.py), and
        # PostgreSQL's driver (its binary wheel: no compiler or libpq needed).
        "sqlalchemy>=2.0,<2.2",
        "psycopg[binary]>=3.1,<4",
    ],
    extras_require={
        "django": ["django>=4.2"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "kombu>=5.3",
            "ruff>=0.5",
            "mypy>=1.8",
            "django>=4.2",
            "zulip>=0.9",
            "markdown>=3.5",
            "playwright>=1.40",
        ],
        # The baselines the benchmarks (python -m bench) compare eventbus with.
        "bench": ["kombu>=5.3", "markdown>=3.5", "python-socketio>=5.10", "aiohttp>=3.9"],
    },
    entry_points={"console_scripts": ["eventbus=eventbus.cli:main"]},
)
