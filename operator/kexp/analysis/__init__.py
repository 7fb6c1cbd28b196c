"""Pure views of Experiments for people: rows, the master CSV, comparisons, curves, reports."""
