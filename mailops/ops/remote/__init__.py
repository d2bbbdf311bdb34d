"""Scripts that run on the hosts (python3's standard library only), sent
over SSH by the runbooks; never imported by the controller's code."""
