"""The driver: plan and run, the task engine, the cluster, the report, worker caches."""
