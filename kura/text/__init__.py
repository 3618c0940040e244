"""Text cleaning: normalization, language id and rule filters. Each filter decides keep/drop with a reason; the
caller counts drops by reason and quarantines the dropped documents (datatrove's convention)."""
