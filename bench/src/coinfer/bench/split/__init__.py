"""Split inference measured: real image sets, workloads and the bench (issue 19)."""
