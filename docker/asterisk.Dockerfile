# Asterisk 22 from Debian sid, the same packages as the root `make setup` builds.
FROM debian:sid-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends asterisk asterisk-core-sounds-en-gsm asterisk-moh-opsound-gsm \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /etc/asterisk/instance /usr/share/asterisk/sounds/en_US_f_Allison/acd \
 && mkdir -p /srv/acd/run /srv/acd/log/cdr-csv /srv/acd/db /srv/acd/spool \
 && chown -R asterisk:asterisk /srv/acd
CMD ["/usr/sbin/asterisk", "-f", "-C", "/etc/asterisk/instance/asterisk.conf", "-U", "asterisk", "-G", "asterisk"]
