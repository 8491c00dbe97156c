"""``python -m lmcache_ascend.integrations.sglang.launch_server``: SGLang's server with the hook.

Takes exactly the arguments of ``python -m sglang.launch_server``. Importing
this module installs :func:`lmcache_ascend.integrations.sglang.hook.install`;
SGLang's scheduler processes are spawned, and spawn re-imports this main
module in each of them, so the hook is in place where ``--enable-lmcache``
builds its radix cache. Without ``--enable-lmcache`` SGLang runs unchanged.
"""

from __future__ import annotations

import os
import sys

from lmcache_ascend.integrations.sglang.hook import install

install()


def main(argv: list[str]) -> None:
    from sglang.srt.entrypoints.http_server import launch_server
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    server_args = prepare_server_args(argv)
    try:
        launch_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main(sys.argv[1:])
