"""Analysis: turn a study's results table into fitted laws, figures and a report."""
