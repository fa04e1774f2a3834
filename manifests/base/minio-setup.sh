#!/bin/sh
# Bucket setup for nasagent, run by Job minio-bucket with MinIO's `mc` client. Idempotent: it
# creates the bucket of Secret nasagent-s3, a MinIO user with that Secret's access key, and a
# policy that lets this user read and write that one bucket only, and attaches it. Running it again
# changes nothing (or rotates the user's secret key to the Secret's current value).
set -eu

: "${MINIO_URL:?}" "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}"
: "${S3_ACCESS_KEY:?}" "${S3_SECRET_KEY:?}" "${S3_BUCKET:?}"
# mc keeps its aliases in a config directory, which must be writable: the root filesystem is not.
MC_DIR="${TMPDIR:-/tmp}/mc"
POLICY_NAME="nasagent-${S3_BUCKET}"
POLICY_FILE="${TMPDIR:-/tmp}/${POLICY_NAME}.json"

tries=0
until mc --config-dir "$MC_DIR" alias set nasagent "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "minio-setup: MinIO at $MINIO_URL did not accept the root credentials of Secret nasagent-minio" >&2
        exit 1
    fi
    sleep 5
done

mc --config-dir "$MC_DIR" mb --ignore-existing "nasagent/$S3_BUCKET"

if [ "$S3_ACCESS_KEY" = "$MINIO_ROOT_USER" ]; then
    # The root user already reaches every bucket; MinIO refuses to add it as a user.
    echo "minio-setup: nasagent-s3 uses MinIO's root user; no bucket-scoped user created" >&2
    exit 0
fi

cat > "$POLICY_FILE" <<POLICY
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::${S3_BUCKET}"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::${S3_BUCKET}/*"]
    }
  ]
}
POLICY

mc --config-dir "$MC_DIR" admin user add nasagent "$S3_ACCESS_KEY" "$S3_SECRET_KEY"
mc --config-dir "$MC_DIR" admin policy create nasagent "$POLICY_NAME" "$POLICY_FILE"
# Attaching a policy that is already attached is an error in mc; on a rerun it is not one.
if ! mc --config-dir "$MC_DIR" admin policy attach nasagent "$POLICY_NAME" --user "$S3_ACCESS_KEY"; then
    mc --config-dir "$MC_DIR" admin user info nasagent "$S3_ACCESS_KEY" | grep -q "$POLICY_NAME"
fi
echo "minio-setup: bucket $S3_BUCKET ready for user $S3_ACCESS_KEY"
