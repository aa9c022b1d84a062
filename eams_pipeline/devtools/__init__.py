"""Development tools outside the runtime: the local demo and the loopback SFTP and SMTP
servers (their libraries are the `demo` extra)."""
