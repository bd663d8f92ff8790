"""One module per subcommand, each `run(command, options, comm)` on every rank: set up (errors agreed
on by every rank), load the session, drive it, report on rank 0."""

from . import bench, chat, generate, logits

RUN = {"generate": generate.run, "chat": chat.run, "logits": logits.run, "bench": bench.run}
