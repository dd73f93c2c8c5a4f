"""The paper's ablation tables as DVC experiment queues (``ccvs ablation``).

``tables``: what each table's rows change, which metrics it reports and the paper's direction
between rows; ``queue``: the rows as ``dvc exp run --queue`` experiments, run by ``dvc queue
start`` and waited for; ``report``: every row's metrics from ``dvc exp show`` as a markdown
table with a verdict per direction, and one MLflow run per row so the rows compare side by side.
"""
