"""InFi measured: benchmark tasks on real models, the prior systems' filters, deployments, drift."""
