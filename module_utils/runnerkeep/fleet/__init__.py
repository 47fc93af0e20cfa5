"""The fleet report: one host's facts in one read-only pass (``host_facts``, behind
``runnerkeep fleet-facts --json``), and, on the controller, the fleet model ranked by risk
(``report_model``) rendered as one self-contained HTML page, Markdown and JSON."""
