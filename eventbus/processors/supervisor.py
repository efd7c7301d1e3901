"""The supervisord configuration production runs: one program per queue, one group for all."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus.processors.registry import get_worker_class

#: Longer than the default 30 s event timeout, so a SIGTERM'd worker can finish its event.
STOP_WAIT_SECS = 60


def supervisor_conf(queues: Sequence[str], eventbus_path: str, log_dir: str, user: str | None = None) -> str:
    """supervisord sections for ``queues``, running ``eventbus_path process_queue``."""
    programs = []
    sections = ["; eventbus queue workers, written by `eventbus supervisor_conf`.\n"]
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
    return "\n".join(sections)
