"""Network and storage I/O: SFTP, SMTP and the encrypted upload archive."""
