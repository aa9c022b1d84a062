"""Real loopback SFTP and SMTP servers for the test suite and the local demo."""
