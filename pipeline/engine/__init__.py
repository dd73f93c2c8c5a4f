"""Where the data stages' work runs: this machine (the default) or a Dask cluster.

``prepare`` (decoding videos), ``tokenize`` (E/Q and the VQs over clip groups) and ``evaluate``'s
synthesis (T and D·S·E·F over input batches) each map one worker function over an ordered stream
of work items; ``config.EngineParams`` (the ``engine`` section of ``params.yaml``) picks who runs
it, ``cluster.open_engine`` starts or joins that runner, and the stage writes the results in input
order either way, so the output is byte-identical to the single-machine run. ``prepare`` maps its
worker through ``prepare.decode_on`` (the cluster side of ``pipeline.data.prepare_pool``).
"""
