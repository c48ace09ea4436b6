"""Inspection of tool calls: what a call does, before anyone decides on it."""
