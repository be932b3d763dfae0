"""The pick zoo: tasks from several sources that this project did not tune on, and the methods compared on them.

``python -m benchmarks.zoo`` prints the table (see ``benchmarks/zoo/__main__.py``); ``tasks.py`` names the tuning and
the held-out halves.
"""
