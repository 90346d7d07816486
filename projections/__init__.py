"""The read models: each follows the event log with tracking (``projections.contract``) and
answers one kind of question (search, quality, persons, timelines, unmapped codes, terminology)."""
