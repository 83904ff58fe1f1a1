"""Small jobvisor applications that the process-level tests run as supervisors."""
