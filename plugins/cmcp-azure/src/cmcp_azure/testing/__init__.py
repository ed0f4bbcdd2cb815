"""Test doubles of what an Azure confidential VM's guest talks to, and HCL sets signed by
test roots: `synthetic` (HCL reports, VCEKs and TD quotes), `imds` (Azure's instance
metadata service as a real HTTP process) and `paravisor` (the vTPM behind the paravisor as
a real process in front of swtpm). Nothing here is used by the collector or the verifiers.
"""
