"""The study: the objective a trial runs, the baselines users would otherwise run, confirmation over seeds, the
typed trial record, progress, and the result and summary the command prints."""
