"""STIP measured: ``coinfer stip bench`` against plain cloud inference."""
