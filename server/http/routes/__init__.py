"""The HTTP routes, one file per resource; each converts and calls server/service.py through calls.run_call."""
