"""AMI controller: the Asterisk Manager connection, scheduler, call initiator and outcome rules."""
