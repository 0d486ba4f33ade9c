"""Console screens: one per view (mode), plus modals."""
