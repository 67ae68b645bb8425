package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Key is an account's SSH public key.
type Key struct {
	OwnerID           string    `db:"owner_id"`
	Name              string    `db:"name"`
	FingerprintMD5    string    `db:"fingerprint_md5"`
	FingerprintSHA256 string    `db:"fingerprint_sha256"`
	Text              string    `db:"key_text"`
	CreatedAt         time.Time `db:"created_at"`
}

const keyColumns = `owner_id::text, name, fingerprint_md5, fingerprint_sha256, key_text, created_at`

const sqlCreateKey = `INSERT INTO keys (owner_id, name, fingerprint_md5, fingerprint_sha256, key_text)
VALUES ($1, $2, $3, $4, $5) RETURNING ` + keyColumns

// CreateKey adds a key to an account. A name or fingerprint already on the
// account is a Conflict.
func (s *Store) CreateKey(ctx context.Context, k Key) (Key, error) {
	rows, _ := s.pool.Query(ctx, sqlCreateKey, k.OwnerID, k.Name, k.FingerprintMD5, k.FingerprintSHA256, k.Text)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Key])
	if err != nil {
		if pgCode(err) == sqlUniqueViolation {
			if constraintOf(err) == "keys_pkey" {
				return Key{}, errdefs.Conflictf("key name %q is already in use", k.Name)
			}
			return Key{}, errdefs.Conflictf("key with fingerprint %s already exists", k.FingerprintMD5)
		}
		return Key{}, translate(err)
	}
	return out, nil
}

const sqlListKeys = `SELECT ` + keyColumns + ` FROM keys WHERE owner_id = $1 ORDER BY created_at, name`

// ListKeys returns an account's keys, oldest first.
func (s *Store) ListKeys(ctx context.Context, ownerID string) ([]Key, error) {
	rows, _ := s.pool.Query(ctx, sqlListKeys, ownerID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Key])
	return out, translate(err)
}

const sqlGetKey = `SELECT ` + keyColumns + ` FROM keys WHERE owner_id = $1 AND (name = $2 OR fingerprint_md5 = $2)
ORDER BY (name = $2) DESC LIMIT 1`

// GetKey finds an account's key by name or MD5 fingerprint.
func (s *Store) GetKey(ctx context.Context, ownerID, nameOrFP string) (Key, error) {
	rows, _ := s.pool.Query(ctx, sqlGetKey, ownerID, nameOrFP)
	k, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Key])
	if err != nil {
		return Key{}, notFound(err, nameOrFP+" not found")
	}
	return k, nil
}

const sqlDeleteKey = `DELETE FROM keys WHERE owner_id = $1 AND name = (
	SELECT name FROM keys WHERE owner_id = $1 AND (name = $2 OR fingerprint_md5 = $2) ORDER BY (name = $2) DESC LIMIT 1)`

// DeleteKey removes an account's key by name or MD5 fingerprint.
func (s *Store) DeleteKey(ctx context.Context, ownerID, nameOrFP string) error {
	tag, err := s.pool.Exec(ctx, sqlDeleteKey, ownerID, nameOrFP)
	if err != nil {
		return translate(err)
	}
	if tag.RowsAffected() == 0 {
		return errdefs.NotFoundf("%s not found", nameOrFP)
	}
	return nil
}

const sqlKeyForLogin = `SELECT a.id::text, a.disabled, a.operator, k.key_text FROM accounts a
JOIN keys k ON k.owner_id = a.id WHERE a.login = $1 AND (k.name = $2 OR k.fingerprint_md5 = $2)
ORDER BY (k.name = $2) DESC LIMIT 1`

// AuthKey is what authentication needs to verify a request.
type AuthKey struct {
	AccountID string
	Disabled  bool
	Operator  bool
	KeyText   string
}

// KeyForLogin finds the key an HTTP Signature names: account login plus key
// name or MD5 fingerprint.
func (s *Store) KeyForLogin(ctx context.Context, login, keyID string) (AuthKey, error) {
	var k AuthKey
	err := s.pool.QueryRow(ctx, sqlKeyForLogin, login, keyID).Scan(&k.AccountID, &k.Disabled, &k.Operator, &k.KeyText)
	if err != nil {
		return AuthKey{}, notFound(err, "key not found")
	}
	return k, nil
}
