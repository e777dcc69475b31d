"""Durable state: schema, frozen migrations, engines, the group-commit writer, the audit hash chain."""
