"""Execution: running the cells of a matrix and telling where they stand.

- `runner`: one cell start to finish (lock, train or resume, evaluate, mark DONE); imports torch.
- `executors`: who runs the cells (`local`: here, one after another; `ray`: a Ray task per cell).
- `status`: finished / running / failed / pending, from the store and the lock files only (no torch).
- `progress`: live bars and log lines for cells and the whole matrix.

Nothing is re-exported here, so importing one of them never pulls in the others (the runner pulls in torch).
"""
