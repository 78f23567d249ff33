"""Execute the ablation notebooks in ONE kernel and store them with their outputs.

    python experiments/notebooks/execute.py            # every notebook here, on the committed results file
    python experiments/notebooks/execute.py warm_start.ipynb

The notebooks read ``results/grid.jsonl`` by default (made by experiments/collect_results.py), so this takes
seconds per notebook; re-run it after re-collecting. The tests call :func:`execute_notebooks` with
``BAYES_DC_SMOKE=1`` on the tiny sweep. One kernel for all notebooks, because a kernel start (an interpreter
importing numpy, torch and matplotlib) costs more than a notebook; its namespace is reset between notebooks,
so one notebook cannot lean on a name another defined.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat

NB_DIR = Path(__file__).resolve().parent


def execute_notebooks(paths: list[Path], timeout: int = 180) -> Iterator[tuple[Path, nbformat.NotebookNode]]:
    """Yield (path, executed notebook) for each of ``paths``, run in order in one kernel (cwd: this folder).

    The kernel inherits this process's environment (``BAYES_DC_SMOKE`` and friends). Errors in a cell raise
    nbclient's ``CellExecutionError``, as ``NotebookClient.execute`` does.
    """
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    # "python3" resolves to this interpreter (ipykernel's native kernel spec), i.e. the venv running this.
    kernel = KernelManager(kernel_name="python3")
    kernel.start_kernel(cwd=str(NB_DIR))
    try:
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))  # a clean namespace per notebook
            client = NotebookClient(nb, km=kernel, timeout=timeout, kernel_name="python3")
            try:
                client.execute()
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()
            nb.cells.pop(0)
            count = 0
            for cell in nb.cells:
                if cell.cell_type == "code":
                    count += 1
                    cell.execution_count = count
                    for output in cell.outputs:
                        if "execution_count" in output:
                            output.execution_count = count
            yield path, nb
    finally:
        kernel.shutdown_kernel(now=True)


def main(argv: list[str]) -> None:
    paths = [NB_DIR / a for a in argv] if argv else sorted(NB_DIR.glob("*.ipynb"))
    for path, nb in execute_notebooks(paths):
        nbformat.write(nb, path)
        print("executed", path.name)


if __name__ == "__main__":
    main(sys.argv[1:])
