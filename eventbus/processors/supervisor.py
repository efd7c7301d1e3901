"""The supervisord configuration production runs: one program per queue, one per Tornado shard, a group each."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.processors.registry import get_worker_class

#: Longer than the default 30 s event timeout, so a SIGTERM'd worker can finish its event.
STOP_WAIT_SECS = 60
#: A Tornado process answers its held requests, waits for its last answers (5 s at most) and saves its queues.
TORNADO_STOP_WAIT_SECS = 30


def supervisor_conf(queues: Sequence[str], eventbus_path: str, log_dir: str, user: str | None = None,
                    shards: int = 1) -> str:
    """supervisord sections for ``queues``, running ``eventbus_path process_queue``, and for the Tornado
    process of each of ``shards`` shards (``runtornado --shard=N``; one shard: ``runtornado``)."""
    programs = []
    sections = ["; eventbus queue workers and Tornado shards, written by `eventbus supervisor_conf`.\n"]
    for queue in queues:
        program = f"eventbus_{queue}"
        programs.append(program)
        workers = get_worker_class(queue).options.workers
        lines = [
            f"[program:{program}]",
            f"command={eventbus_path} process_queue --queue={queue} --worker_num=%(process_num)s",
            "process_name=%(program_name)s_%(process_num)s",
            f"numprocs={workers}",
            "autostart=true",
            "autorestart=true",
            "stopsignal=TERM",
            f"stopwaitsecs={STOP_WAIT_SECS}",
            "redirect_stderr=true",
            f"stdout_logfile={log_dir}/{queue}.log",
        ]
        if user:
            lines.append(f"user={user}")
        sections.append("\n".join(lines) + "\n")
    sections.append(f"[group:eventbus-workers]\nprograms={','.join(programs)}\n")
    sections += tornado_programs(eventbus_path, log_dir, user, shards)
    return "\n".join(sections)


def tornado_programs(eventbus_path: str, log_dir: str, user: str | None, shards: int) -> list[str]:
    """A program per Tornado shard (each listening where EVENTBUS_TORNADO_SHARDS says), and their group."""
    names = [f"eventbus_tornado_{n}" if shards > 1 else "eventbus_tornado" for n in range(shards)]
    sections = []
    for n, name in enumerate(names):
        lines = [
            f"[program:{name}]",
            f"command={eventbus_path} runtornado" + (f" --shard={n}" if shards > 1 else ""),
            "autostart=true",
            "autorestart=true",
            "stopsignal=TERM",
            f"stopwaitsecs={TORNADO_STOP_WAIT_SECS}",
            "redirect_stderr=true",
            f"stdout_logfile={log_dir}/{name.removeprefix('eventbus_')}.log",
            *([f"user={user}"] if user else []),
        ]
        sections.append("\n".join(lines) + "\n")
    sections.append(f"[group:eventbus-tornado]\nprograms={','.join(names)}\n")
    return sections
