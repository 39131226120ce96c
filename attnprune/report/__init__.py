"""Reports of a pruning run: plots and Markdown."""
