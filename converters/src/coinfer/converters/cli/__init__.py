"""``coinfer export keras | torch | verify``, one module per action, registered as entry points."""
