"""One module per ``dotsllm`` subcommand, each with ``add_arguments(parser)`` and ``run(args)``."""
