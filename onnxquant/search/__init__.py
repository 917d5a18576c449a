"""The automatic recipe search: candidates, trials as serializable units, and their report."""
