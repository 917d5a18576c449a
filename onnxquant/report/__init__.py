"""Reports for people and scripts: the JSON report, its HTML page, and the charts in it."""
