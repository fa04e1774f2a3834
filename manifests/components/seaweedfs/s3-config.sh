#!/bin/sh
# Writes SeaweedFS's S3 identities file ($S3_CONFIG) from Secret nasagent-s3, mounted as files in
# $S3_SECRET_DIR (keys access_key, secret_key, bucket): one identity that may read, list, write and
# delete objects of that bucket and nothing else. Run by the seaweedfs StatefulSet's init
# container into an in-memory emptyDir, so the credentials never reach a disk or an environment
# variable. Running it again rewrites the file from the Secret's current values.
set -eu

: "${S3_SECRET_DIR:?}" "${S3_CONFIG:?}"
read_key() {
    if [ ! -r "$S3_SECRET_DIR/$1" ]; then
        echo "s3-config: Secret nasagent-s3 has no key $1" >&2
        exit 1
    fi
    cat "$S3_SECRET_DIR/$1"
}
access_key=$(read_key access_key)
secret_key=$(read_key secret_key)
bucket=$(read_key bucket)

# Keys go into JSON unescaped: allow only what S3 keys and bucket names are made of.
case "$access_key$secret_key" in
    *[!A-Za-z0-9+/=._-]*)
        echo "s3-config: access_key and secret_key may hold only letters, digits and + / = . _ -" >&2
        exit 1 ;;
esac
if [ ${#access_key} -lt 3 ] || [ ${#secret_key} -lt 8 ]; then
    echo "s3-config: access_key needs at least 3 characters and secret_key at least 8" >&2
    exit 1
fi
if ! printf '%s' "$bucket" | grep -Eq '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$'; then
    echo "s3-config: bucket '$bucket' is not a valid S3 bucket name" >&2
    exit 1
fi

umask 077
cat > "$S3_CONFIG" <<JSON
{
  "identities": [
    {
      "name": "nasagent",
      "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
      "actions": ["Read:$bucket", "List:$bucket", "Write:$bucket"]
    }
  ]
}
JSON
echo "s3-config: identity $access_key may use bucket $bucket"
