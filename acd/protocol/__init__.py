"""Sans-IO codecs for Asterisk's AMI and AGI protocols: feed bytes in, get messages out; build
commands as bytes. Nothing here awaits or touches a socket; the asyncio shells live in
`acd.adapters`.
"""
