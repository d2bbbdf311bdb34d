"""Stage 7, workflows: the commands that chain the stages (up, plan).

May import: every stage and mailops.lab.
"""
