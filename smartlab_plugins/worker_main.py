"""Entry point of the worker's child process: ``python -m smartlab_plugins.worker_main FD``."""

import sys

from smartlab_plugins.worker.serving import child_main

if __name__ == "__main__":
    child_main(int(sys.argv[1]))
