#!/usr/bin/env bash
# Local Apache Kafka (KRaft, no ZooKeeper) from Maven Central jars.
#
#   deploy/kafka/kafka.sh fetch                 download the broker jars (mvn)
#   deploy/kafka/kafka.sh [--mode M] start      format storage if needed, start, wait for "Kafka Server started"
#   deploy/kafka/kafka.sh [--mode M] stop       SIGTERM, then SIGKILL after a deadline
#   deploy/kafka/kafka.sh [--mode M] status     which nodes run
#   deploy/kafka/kafka.sh [--mode M] bootstrap  print the bootstrap servers
#   deploy/kafka/kafka.sh [--mode M] kill N     kill -9 node N (failure tests)
#   deploy/kafka/kafka.sh [--mode M] start-node N   start node N again
#   deploy/kafka/kafka.sh [--mode M] reset      stop and delete this mode's data
#
# Modes: single (default; one broker+controller on 127.0.0.1:9092), cluster
# (three broker+controller nodes on 127.0.0.1:19092-19094, replication factor 3,
# min ISR 2) and secure (one broker+controller with SASL, TLS and ACLs).
#
# Secure mode (base port P, default 9093), all on 127.0.0.1:
#   P      SASL_SSL        PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (also inter-broker, as admin/PLAIN)
#   P+1    SSL             mutual TLS (ssl.client.auth=required); principal = the cert's CN
#   P+2    SASL_PLAINTEXT  the same SASL mechanisms, without TLS
#   P+100  controller      SASL_SSL, PLAIN, admin only
# Users admin (super user), projector and outsider (no ACLs); their passwords
# are made once into $KAFKA_RUN_DIR/secrets/<user>.password, a CA and PEM
# certificates (broker; clients CN=projector and CN=outsider) into
# $KAFKA_RUN_DIR/tls/, an admin client config into $KAFKA_RUN_DIR/admin.properties.
# The first start grants User:projector what a worker with the defaults needs
# (grant User:projector projector events control). Secure mode also has:
#   kafka.sh --mode secure bootstrap [sasl_ssl|ssl|sasl_plaintext]
#                          bootstrap servers of one listener (default sasl_ssl)
#   kafka.sh --mode secure grant PRINCIPAL APP_ID EVENTS_TOPIC CONTROL_TOPIC
#                          allow PRINCIPAL (e.g. User:projector) a worker's topics
#                          (prefix APP_ID-, EVENTS_TOPIC, CONTROL_TOPIC,
#                          EVENTS_TOPIC.deadletter), group APP_ID, the command
#                          writers' transactional ids (prefix APP_ID-writer-) and
#                          IdempotentWrite; prints each as a kafka-acls.sh line
#   kafka.sh --mode secure acls [kafka-acls options]   list the ACLs
#   kafka.sh --mode secure env [sasl_ssl|ssl|sasl_plaintext]
#                          PROJECTOR_BROKER_* settings for a worker as projector
#
# Environment (all optional):
#   KAFKA_RUN_DIR   state, logs and PIDs (default deploy/kafka/.run/<mode>)
#   KAFKA_PORT      first client port (default 9092 single, 19092 cluster,
#                   9093 secure); node i listens on KAFKA_PORT+i-1, its
#                   controller on +100 (secure: see above)
#   KAFKA_HOST      address the client listeners bind and advertise, in single
#                   and cluster modes (default 127.0.0.1; e.g. the address of a
#                   host or network namespace, so workers elsewhere can connect);
#                   the controller listeners stay on 127.0.0.1. Secure mode keeps
#                   127.0.0.1 (its broker certificate names only that address)
#   KAFKA_HEAP      JVM heap flags (default "-Xms512m -Xmx768m")
#   KAFKA_START_TIMEOUT  seconds to wait for a node to start (default 120)
#   KAFKA_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 30)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE="$HERE/.cache"
LIB="$CACHE/lib"
MODE=single

die() { echo "kafka.sh: $*" >&2; exit 1; }
say() { echo "kafka.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=${2:?--mode needs single, cluster or secure}; shift 2 ;;
    --mode=*) MODE=${1#--mode=}; shift ;;
    *) break ;;
  esac
done
CMD=${1:-}
[ -n "$CMD" ] || { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; exit 2; }
shift

case "$MODE" in
  single) NODES=1; DEFAULT_PORT=9092 ;;
  cluster) NODES=3; DEFAULT_PORT=19092 ;;
  secure) NODES=1; DEFAULT_PORT=9093 ;;
  *) die "unknown mode '$MODE' (use single, cluster or secure)" ;;
esac
RUN_DIR=${KAFKA_RUN_DIR:-$HERE/.run/$MODE}
PORT=${KAFKA_PORT:-$DEFAULT_PORT}
HOST=${KAFKA_HOST:-127.0.0.1}
if [ "$MODE" = secure ] && [ "$HOST" != 127.0.0.1 ]; then
  die "KAFKA_HOST works in single and cluster modes only (secure mode's certificate names 127.0.0.1)"
fi
HEAP=${KAFKA_HEAP:--Xms512m -Xmx768m}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-120}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
TLS_DIR=$RUN_DIR/tls
SECRETS_DIR=$RUN_DIR/secrets
ADMIN_CONFIG=$RUN_DIR/admin.properties
USERS="admin projector outsider"
# Secure mode keeps passwords in its configs: nothing it writes is for other users.
if [ "$MODE" = secure ]; then umask 077; fi

client_port() { echo $((PORT + $1 - 1)); }
controller_port() { echo $((PORT + 100 + $1 - 1)); }
node_dir() { echo "$RUN_DIR/node$1"; }
pid_file() { echo "$(node_dir "$1")/kafka.pid"; }

node_ports() {  # node -> every port it listens on
  if [ "$MODE" = secure ]; then
    echo "$PORT $((PORT + 1)) $((PORT + 2)) $((PORT + 100))"
  else
    echo "$(client_port "$1") $(controller_port "$1")"
  fi
}

listener_port() {  # secure mode: listener name -> port
  case "$1" in
    sasl_ssl|SASL_SSL) echo "$PORT" ;;
    ssl|SSL) echo $((PORT + 1)) ;;
    sasl_plaintext|SASL_PLAINTEXT) echo $((PORT + 2)) ;;
    *) die "unknown listener '$1' (use sasl_ssl, ssl or sasl_plaintext)" ;;
  esac
}

bootstrap() {  # [listener] (secure mode only)
  local i out="" port
  if [ "$MODE" = secure ]; then
    port=$(listener_port "${1:-sasl_ssl}")
    echo "127.0.0.1:$port"
    return 0
  fi
  [ $# -eq 0 ] || die "bootstrap takes a listener name only in secure mode"
  for i in $(seq 1 "$NODES"); do out="${out:+$out,}$HOST:$(client_port "$i")"; done
  echo "$out"
}

fetch() {
  if ls "$LIB"/kafka_2.13-*.jar >/dev/null 2>&1 && [ -f "$LIB/.complete" ] \
     && [ "$LIB/.complete" -nt "$HERE/pom.xml" ]; then
    return 0
  fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch the Kafka jars"
  command -v java >/dev/null || die "Java 17 is needed to run Kafka"
  say "fetching the Kafka jars from Maven Central into $LIB"
  local new="$CACHE/lib.new" f
  rm -rf "$new"
  mkdir -p "$new" "$LIB"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$new" \
    || { rm -rf "$new"; die "mvn could not fetch the Kafka jars (see the output above)"; }
  if ! ls "$new"/kafka_2.13-*.jar >/dev/null 2>&1; then
    rm -rf "$new"
    die "mvn left no Kafka jars in $new; $LIB is unchanged"
  fi
  # Update the jars in place: a broker already running from them keeps its
  # unchanged jars (a JVM opens jars lazily; deleting them all would break it).
  rm -f "$LIB/.complete"
  for f in "$LIB"/*.jar; do
    if [ -e "$f" ] && [ ! -e "$new/${f##*/}" ]; then rm -f "$f"; fi
  done
  for f in "$new"/*.jar; do
    if ! cmp -s "$f" "$LIB/${f##*/}"; then mv -f "$f" "$LIB/"; fi
  done
  rm -rf "$new"
  touch "$LIB/.complete"
}

is_running() {  # node -> 0 when its recorded PID is a live Kafka JVM
  local pf pid
  pf=$(pid_file "$1")
  [ -f "$pf" ] || return 1
  pid=$(cat "$pf")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
    && grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null
}

port_busy() {  # port: something answers on 127.0.0.1 or KAFKA_HOST
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null \
    || { [ "$HOST" != 127.0.0.1 ] && (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
}

voters() {
  local i out=""
  for i in $(seq 1 "$NODES"); do
    out="${out:+$out,}$i@127.0.0.1:$(controller_port "$i")"
  done
  echo "$out"
}

listener_config() {  # node -> the listener lines of server.properties
  local n=$1 sasl_ssl ssl sasl_plain
  if [ "$MODE" != secure ]; then
    cat <<EOF
listeners=PLAINTEXT://$HOST:$(client_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://$HOST:$(client_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
EOF
    return 0
  fi
  sasl_ssl="SASL_SSL://127.0.0.1:$(listener_port sasl_ssl)"
  ssl="SSL://127.0.0.1:$(listener_port ssl)"
  sasl_plain="SASL_PLAINTEXT://127.0.0.1:$(listener_port sasl_plaintext)"
  cat <<EOF
listeners=$sasl_ssl,$ssl,$sasl_plain,CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=$sasl_ssl,$ssl,$sasl_plain
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_SSL
EOF
}

password() { cat "$SECRETS_DIR/$1.password"; }

security_config() {  # secure mode: authentication, TLS and authorization
  local admin plain_users="" u
  admin=$(password admin)
  for u in $USERS; do plain_users="$plain_users user_$u=\"$(password "$u")\""; done
  local plain=org.apache.kafka.common.security.plain.PlainLoginModule
  local scram=org.apache.kafka.common.security.scram.ScramLoginModule
  cat <<EOF
# --- secure mode: SASL, TLS, ACLs ---
# No listener maps anyone to a super user without authentication: the broker
# reaches itself (inter-broker, SASL_SSL) and its controller (SASL_SSL) as
# User:admin with PLAIN, and the controller listener knows only admin.
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=$plain required username="admin" password="$admin" user_admin="$admin";
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain required username="admin" password="$admin"$plain_users;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram required;
listener.name.sasl_plaintext.plain.sasl.jaas.config=$plain required$plain_users;
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$scram required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$scram required;
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.ssl.ssl.client.auth=required
# A client certificate CN=projector is User:projector, like SASL user projector.
ssl.principal.mapping.rules=RULE:^CN=([^,]+).*\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
EOF
}

ossl() {  # openssl with its chatter in tls/openssl.log, shown on failure
  openssl "$@" >> "$TLS_DIR/openssl.log" 2>&1 \
    || { tail -n 20 "$TLS_DIR/openssl.log" >&2; die "openssl $1 failed (log: $TLS_DIR/openssl.log)"; }
}

issue_cert() {  # name extensions: an EC key and a certificate CN=name signed by the CA
  local d=$TLS_DIR name=$1
  if [ -f "$d/$name.pem" ] && [ -f "$d/$name.key" ]; then return 0; fi
  ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$name.key"
  chmod 600 "$d/$name.key"
  printf '%s\n' "$2" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" > "$d/$name.ext"
  ossl req -new -key "$d/$name.key" -subj "/CN=$name" -out "$d/$name.csr"
  ossl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAserial "$d/ca.srl" \
    -CAcreateserial -days 3650 -sha256 -extfile "$d/$name.ext" -out "$d/$name.pem"
  rm -f "$d/$name.csr" "$d/$name.ext"
}

make_tls() {  # secure mode: CA, broker and client certificates (PEM), made when missing
  local d=$TLS_DIR
  command -v openssl >/dev/null \
    || die "openssl is needed for secure mode (it makes the CA and certificates in $d)"
  mkdir -p "$d"
  if [ ! -f "$d/ca.pem" ] || [ ! -f "$d/ca.key" ]; then
    # A new CA: certificates signed by an earlier one would not verify.
    rm -f "$d"/*.pem "$d"/*.key "$d/ca.srl"
    ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key"
    chmod 600 "$d/ca.key"
    printf '%s\n' "basicConstraints=critical,CA:TRUE" "keyUsage=critical,keyCertSign,cRLSign" \
      "subjectKeyIdentifier=hash" > "$d/ca.ext"
    ossl req -new -key "$d/ca.key" -subj "/CN=projector test CA" -out "$d/ca.csr"
    ossl x509 -req -in "$d/ca.csr" -signkey "$d/ca.key" -days 3650 -sha256 \
      -extfile "$d/ca.ext" -out "$d/ca.pem"
    rm -f "$d/ca.csr" "$d/ca.ext"
  fi
  issue_cert broker "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
  local u
  for u in projector outsider; do
    issue_cert "$u" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
  done
  # Kafka's PEM key store: the unencrypted PKCS#8 key and its certificate in one file.
  cat "$d/broker.key" "$d/broker.pem" > "$d/broker.keystore.pem"
  chmod 600 "$d/broker.keystore.pem"
}

make_secrets() {  # secure mode: a random password per user, made once
  local u f
  mkdir -p "$SECRETS_DIR"
  for u in $USERS; do
    f="$SECRETS_DIR/$u.password"
    if [ -s "$f" ]; then continue; fi
    if [ -f "$(node_dir 1)/data/meta.properties" ]; then
      die "$f is missing, but the storage already holds SCRAM credentials; run: kafka.sh --mode secure reset"
    fi
    openssl rand -hex 16 | tr -d '\n' > "$f"
    chmod 600 "$f"
  done
  cat > "$ADMIN_CONFIG" <<EOF
# generated by deploy/kafka/kafka.sh: the admin client of secure mode (SASL_SSL listener)
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(password admin)";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
EOF
  chmod 600 "$ADMIN_CONFIG"
}

write_config() {  # node
  local n=$1 dir rf isr
  dir=$(node_dir "$n")
  mkdir -p "$dir/data"
  if [ "$NODES" -eq 1 ]; then rf=1; isr=1; else rf=3; isr=2; fi
  {
  cat <<EOF
# generated by deploy/kafka/kafka.sh ($MODE mode, node $n)
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
EOF
  listener_config "$n"
  cat <<EOF
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.threads=1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.check.interval.ms=60000
EOF
  if [ "$MODE" = secure ]; then security_config; fi
  } > "$dir/server.properties"
  cat > "$dir/log4j2.properties" <<EOF
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.ak.name = org.apache.kafka
logger.ak.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

format_node() {  # node cluster-id
  local dir u m scram=()
  dir=$(node_dir "$1")
  [ -f "$dir/data/meta.properties" ] && return 0
  if [ "$MODE" = secure ]; then
    for u in $USERS; do
      for m in SCRAM-SHA-256 SCRAM-SHA-512; do
        scram+=(--add-scram "$m=[name=$u,password=$(password "$u")]")
      done
    done
    rm -f "$RUN_DIR/default-acls.done"
  fi
  java -cp "$LIB/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      kafka.tools.StorageTool format -t "$2" -c "$dir/server.properties" "${scram[@]}" \
      > "$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; die "formatting KRaft storage of node $1 failed"; }
}

cluster_id() {
  local f="$RUN_DIR/cluster.id"
  if [ ! -f "$f" ]; then
    mkdir -p "$RUN_DIR"
    # A KRaft cluster id: 16 random bytes, URL-safe base64 - never starting with "-",
    # which the storage tool would read as an option.
    python3 -c 'import base64,uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break' > "$f"
  fi
  cat "$f"
}

launch_node() {  # node: start without waiting
  local n=$1 dir p
  dir=$(node_dir "$n")
  if is_running "$n"; then return 0; fi
  for p in $(node_ports "$n"); do
    if port_busy "$p"; then
      die "port $p on 127.0.0.1$([ "$HOST" = 127.0.0.1 ] || echo " or $HOST") is already in use by another process; stop it or set KAFKA_PORT (node $n of $MODE mode)"
    fi
  done
  if [ "$MODE" = secure ]; then make_tls; make_secrets; fi
  write_config "$n"
  format_node "$n" "$(cluster_id)"
  : > "$dir/server.log"
  # shellcheck disable=SC2086
  nohup java $HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$LIB/*" kafka.Kafka "$dir/server.properties" \
    >> "$dir/server.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file "$n")"
}

wait_started() {  # node
  local n=$1 dir deadline pid
  dir=$(node_dir "$n")
  deadline=$((SECONDS + START_TIMEOUT))
  pid=$(cat "$(pid_file "$n")")
  until grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$dir/server.log" >&2
      rm -f "$(pid_file "$n")"
      die "node $n exited during start-up (log: $dir/server.log)"
    fi
    if [ $SECONDS -ge $deadline ]; then
      tail -n 40 "$dir/server.log" >&2
      die "node $n did not log 'Kafka Server started' within ${START_TIMEOUT}s (log: $dir/server.log)"
    fi
    sleep 0.3
  done
}

start() {
  local i started=()
  fetch
  for i in $(seq 1 "$NODES"); do
    if is_running "$i"; then
      say "node $i already running (pid $(cat "$(pid_file "$i")"))"
    else
      launch_node "$i"
      started+=("$i")
    fi
  done
  for i in "${started[@]}"; do wait_started "$i"; done
  if [ "$MODE" = secure ]; then secure_started; return 0; fi
  say "$MODE mode up: bootstrap servers $(bootstrap)"
}

start_node() {
  local n=${1:?start-node needs a node number}
  fetch
  if is_running "$n"; then say "node $n already running"; return 0; fi
  launch_node "$n"
  wait_started "$n"
  if [ "$MODE" = secure ]; then secure_started; return 0; fi
  say "node $n up on $HOST:$(client_port "$n")"
}

secure_started() {  # after a start in secure mode: the worker's default ACLs, once
  if [ ! -f "$RUN_DIR/default-acls.done" ]; then
    grant User:projector projector events control
    : > "$RUN_DIR/default-acls.done"
  fi
  say "secure mode up: SASL_SSL $(bootstrap sasl_ssl), SSL (mTLS) $(bootstrap ssl), SASL_PLAINTEXT $(bootstrap sasl_plaintext)"
  say "users admin, projector, outsider: passwords in $SECRETS_DIR/, CA and client certificates in $TLS_DIR/"
}

TOOL_JAVA=(java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true)

acl_tool() {  # log AclCommand-arguments: AclCommand as admin over SASL_SSL, output in log
  local log=$1
  shift
  # C1 only and the serial GC: a short-lived tool starts in half the time.
  "${TOOL_JAVA[@]}" -Dlog4j2.configurationFile="$(node_dir 1)/log4j2.properties" -cp "$LIB/*" \
      org.apache.kafka.tools.AclCommand --bootstrap-server "$(bootstrap sasl_ssl)" \
      --command-config "$ADMIN_CONFIG" "$@" > "$log" 2>&1
}

need_secure_running() {  # command
  [ "$MODE" = secure ] || die "$1 works only with --mode secure"
  is_running 1 || die "secure mode is not running (kafka.sh --mode secure start); KAFKA_RUN_DIR=$RUN_DIR"
}

ACL_PIDS=()
add_acls() {  # AclCommand arguments: print as a kafka-acls.sh line, run in the background
  echo "kafka-acls.sh --bootstrap-server $(bootstrap sasl_ssl) --command-config $ADMIN_CONFIG $*"
  acl_tool "$RUN_DIR/acls.${#ACL_PIDS[@]}.log" "$@" &
  ACL_PIDS+=($!)
}

grant() {  # PRINCIPAL APP_ID EVENTS_TOPIC CONTROL_TOPIC
  [ "$MODE" = secure ] || die "grant works only with --mode secure"
  [ $# -eq 4 ] || die "usage: kafka.sh --mode secure grant PRINCIPAL APP_ID EVENTS_TOPIC CONTROL_TOPIC"
  local principal=$1 app=$2 events=$3 control=$4 i failed=0
  case "$principal" in ?*:?*) ;; *) die "PRINCIPAL must look like User:name, got '$principal'" ;; esac
  need_secure_running grant
  local add=(--add --allow-principal "$principal")
  local topic_ops=(--operation Create --operation Describe --operation DescribeConfigs
                   --operation Read --operation Write)
  # AclCommand checks every operation against every resource it is given, so
  # one run per pattern type and resource type: five JVMs, run side by side.
  ACL_PIDS=()
  add_acls "${add[@]}" --resource-pattern-type prefixed --topic "$app-" "${topic_ops[@]}"
  add_acls "${add[@]}" --resource-pattern-type literal \
    --topic "$events" --topic "$control" --topic "$events.deadletter" "${topic_ops[@]}"
  add_acls "${add[@]}" --resource-pattern-type literal --group "$app" \
    --operation Read --operation Describe
  add_acls "${add[@]}" --resource-pattern-type prefixed --transactional-id "$app-writer-" \
    --operation Write --operation Describe
  add_acls "${add[@]}" --cluster --operation IdempotentWrite
  for i in "${!ACL_PIDS[@]}"; do
    wait "${ACL_PIDS[$i]}" || failed=1
  done
  for i in "${!ACL_PIDS[@]}"; do cat "$RUN_DIR/acls.$i.log"; done > "$RUN_DIR/acls.log"
  rm -f "$RUN_DIR"/acls.[0-9]*.log
  if [ "$failed" -ne 0 ]; then
    cat "$RUN_DIR/acls.log" >&2
    die "adding ACLs for $principal failed (log: $RUN_DIR/acls.log)"
  fi
}

acls() {  # [kafka-acls options]: list ACLs
  need_secure_running acls
  acl_tool "$RUN_DIR/acls.log" --list "$@" || { cat "$RUN_DIR/acls.log" >&2; die "listing ACLs failed"; }
  cat "$RUN_DIR/acls.log"
}

secure_env() {  # [listener]: PROJECTOR_BROKER_* settings to run a worker as projector
  [ "$MODE" = secure ] || die "env works only with --mode secure"
  local listener=${1:-sasl_ssl} servers
  servers=$(bootstrap "$listener")
  echo "PROJECTOR_BROKER=$servers"
  case "$listener" in
    sasl_ssl|SASL_SSL|sasl_plaintext|SASL_PLAINTEXT)
      echo "PROJECTOR_BROKER_SECURITY_PROTOCOL=${listener^^}"
      echo "PROJECTOR_BROKER_SASL_MECHANISM=SCRAM-SHA-512"
      echo "PROJECTOR_BROKER_SASL_USERNAME=projector"
      echo "PROJECTOR_BROKER_SASL_PASSWORD_FILE=$SECRETS_DIR/projector.password" ;;
    *)
      echo "PROJECTOR_BROKER_SECURITY_PROTOCOL=SSL"
      echo "PROJECTOR_BROKER_SSL_CERTFILE=$TLS_DIR/projector.pem"
      echo "PROJECTOR_BROKER_SSL_KEYFILE=$TLS_DIR/projector.key" ;;
  esac
  case "$listener" in
    sasl_plaintext|SASL_PLAINTEXT) ;;
    *) echo "PROJECTOR_BROKER_SSL_CAFILE=$TLS_DIR/ca.pem" ;;
  esac
}

stop_node() {  # node
  local n=$1 pid deadline
  if ! is_running "$n"; then rm -f "$(pid_file "$n")"; return 0; fi
  pid=$(cat "$(pid_file "$n")")
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      say "node $n did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$(pid_file "$n")"
  say "node $n stopped"
}

stop() {
  local i pids=()
  # In a cluster, SIGTERM all nodes at once: a node stopping alone waits for
  # the others to take over its partitions, which is slow when all go.
  for i in $(seq 1 "$NODES"); do
    if is_running "$i"; then
      pids+=("$i")
      kill -TERM "$(cat "$(pid_file "$i")")" 2>/dev/null || true
    else
      rm -f "$(pid_file "$i")"
    fi
  done
  for i in "${pids[@]}"; do stop_node "$i"; done
  [ ${#pids[@]} -gt 0 ] || say "$MODE mode: nothing running"
}

kill_node() {
  local n=${1:?kill needs a node number} pid
  if ! is_running "$n"; then say "node $n is not running"; return 0; fi
  pid=$(cat "$(pid_file "$n")")
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$(pid_file "$n")"
  say "node $n killed (kill -9 $pid)"
}

status() {
  local i rc=1
  for i in $(seq 1 "$NODES"); do
    if is_running "$i"; then
      say "node $i running, pid $(cat "$(pid_file "$i")"), $HOST:$(client_port "$i")$(
        [ "$MODE" != secure ] || echo " (SASL_SSL), :$((PORT + 1)) (SSL), :$((PORT + 2)) (SASL_PLAINTEXT)")"
      rc=0
    else
      say "node $i stopped"
    fi
  done
  return $rc
}

case "$CMD" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  bootstrap) bootstrap "$@" ;;
  grant) grant "$@" ;;
  acls) acls "$@" ;;
  env) secure_env "$@" ;;
  kill) kill_node "$@" ;;
  start-node) start_node "$@" ;;
  stop-node) stop_node "${1:?stop-node needs a node number}" ;;
  reset) stop; rm -rf "$RUN_DIR"; say "$MODE mode data deleted" ;;
  *) die "unknown command '$CMD' (fetch|start|stop|status|bootstrap|kill N|start-node N|stop-node N|reset; secure mode: grant|acls|env)" ;;
esac
