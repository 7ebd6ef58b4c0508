"""Alembic migrations for the feedback store (applied by ``rlhfkit.feedback.db.upgrade``)."""
