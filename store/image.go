package store

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Image is a CloudAPI image and, for container images, its OCI manifest.
type Image struct {
	ID             string          `db:"id"`
	OwnerID        *string         `db:"owner_id"`
	Name           string          `db:"name"`
	Version        string          `db:"version"`
	OS             string          `db:"os"`
	Type           string          `db:"type"`
	Description    string          `db:"description"`
	Homepage       string          `db:"homepage"`
	Public         bool            `db:"public"`
	State          string          `db:"state"`
	PublishedAt    *time.Time      `db:"published_at"`
	Tags           map[string]any  `db:"tags"`
	Requirements   map[string]any  `db:"requirements"`
	ACL            []string        `db:"acl"`
	ImageSize      *int64          `db:"image_size"`
	ManifestDigest string          `db:"manifest_digest"`
	Manifest       json.RawMessage `db:"manifest"`
	Config         json.RawMessage `db:"config"`
	SizeBytes      int64           `db:"size_bytes"`
	CreatedAt      time.Time       `db:"created_at"`
	UpdatedAt      time.Time       `db:"updated_at"`
}

const imageColumns = `id::text, owner_id::text, name, version, os, type, description, homepage, public, state,
	published_at, tags, requirements, acl, image_size, manifest_digest, manifest, config, size_bytes, created_at, updated_at`

const sqlCreateImage = `INSERT INTO images (id, owner_id, name, version, os, type, description, homepage, public, state,
	published_at, tags, requirements, acl, image_size, manifest_digest, manifest, config, size_bytes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) RETURNING ` + imageColumns

// CreateImage records an image.
func (s *Store) CreateImage(ctx context.Context, im Image) (Image, error) {
	if im.ID == "" {
		im.ID = uuid.NewString()
	}
	if im.State == "" {
		im.State = "active"
	}
	if im.Tags == nil {
		im.Tags = map[string]any{}
	}
	if im.Requirements == nil {
		im.Requirements = map[string]any{}
	}
	if im.ACL == nil {
		im.ACL = []string{}
	}
	if im.PublishedAt == nil && im.State == "active" {
		now := time.Now().UTC()
		im.PublishedAt = &now
	}
	rows, _ := s.pool.Query(ctx, sqlCreateImage, im.ID, im.OwnerID, im.Name, im.Version, im.OS, im.Type, im.Description,
		im.Homepage, im.Public, im.State, im.PublishedAt, im.Tags, im.Requirements, im.ACL, im.ImageSize,
		im.ManifestDigest, nullJSON(im.Manifest), nullJSON(im.Config), im.SizeBytes)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Image])
	if err != nil {
		if pgCode(err) == sqlCheckViolation {
			return Image{}, errdefs.InvalidArgument("image %s: invalid type %q or state %q", im.Name, im.Type, im.State)
		}
		return Image{}, translate(err)
	}
	return out, nil
}

func nullJSON(b json.RawMessage) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// ImageFilter selects images in ListImages. Empty fields do not filter.
type ImageFilter struct {
	Name, OS, Version, Type, Owner string
	State                          string // "" = active, "all" = any
	Public                         *bool
	IncludeDocker                  bool
}

// visibleImage is the tenancy rule for images: public ones, operator
// images shared with everybody (owner NULL), the caller's own, and those
// whose ACL names the caller.
const visibleImage = `(public OR owner_id IS NULL OR owner_id = $1 OR acl ? $1::text)`

const sqlListImages = `SELECT ` + imageColumns + ` FROM images WHERE ` + visibleImage + `
	AND ($2 = '' OR name = $2) AND ($3 = '' OR os = $3) AND ($4 = '' OR version = $4)
	AND (($5 = '' AND ($9 OR type <> 'docker')) OR type = $5)
	AND ($6 = 'all' OR state = CASE WHEN $6 = '' THEN 'active' ELSE $6 END)
	AND ($7::bool IS NULL OR public = $7) AND ($8 = '' OR owner_id::text = $8)
ORDER BY published_at NULLS LAST, name, version`

// ListImages returns the images the owner may see.
func (s *Store) ListImages(ctx context.Context, ownerID string, f ImageFilter) ([]Image, error) {
	rows, _ := s.pool.Query(ctx, sqlListImages, ownerID, f.Name, f.OS, f.Version, f.Type, f.State, f.Public, f.Owner, f.IncludeDocker)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Image])
	return out, translate(err)
}

const sqlGetImage = `SELECT ` + imageColumns + ` FROM images WHERE id = $2 AND ` + visibleImage

// GetImage returns an image the owner may see, or NotFound.
func (s *Store) GetImage(ctx context.Context, ownerID, id string) (Image, error) {
	if !validUUID(id) {
		return Image{}, errdefs.NotFoundf("image %s not found", id)
	}
	rows, _ := s.pool.Query(ctx, sqlGetImage, ownerID, id)
	im, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Image])
	if err != nil {
		return Image{}, notFound(err, "image "+id+" not found")
	}
	return im, nil
}

const sqlImageByID = `SELECT ` + imageColumns + ` FROM images WHERE id = $1`

// ImageByID returns any image regardless of owner (agents, operators).
func (s *Store) ImageByID(ctx context.Context, id string) (Image, error) {
	if !validUUID(id) {
		return Image{}, errdefs.NotFoundf("image %s not found", id)
	}
	rows, _ := s.pool.Query(ctx, sqlImageByID, id)
	im, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Image])
	if err != nil {
		return Image{}, notFound(err, "image "+id+" not found")
	}
	return im, nil
}

const sqlImageByDigest = `SELECT ` + imageColumns + ` FROM images WHERE manifest_digest = $1 LIMIT 1`

// ImageByDigest returns an image by its OCI manifest digest (agents).
func (s *Store) ImageByDigest(ctx context.Context, digest string) (Image, error) {
	rows, _ := s.pool.Query(ctx, sqlImageByDigest, digest)
	im, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Image])
	if err != nil {
		return Image{}, notFound(err, "image "+digest+" not found")
	}
	return im, nil
}

const sqlDeleteImage = `DELETE FROM images WHERE id = $2 AND owner_id = $1`

// DeleteImage removes an image the owner owns.
func (s *Store) DeleteImage(ctx context.Context, ownerID, id string) error {
	if !validUUID(id) {
		return errdefs.NotFoundf("image %s not found", id)
	}
	tag, err := s.pool.Exec(ctx, sqlDeleteImage, ownerID, id)
	if err != nil {
		if pgCode(err) == sqlForeignKeyViolation {
			return errdefs.Conflictf("image %s is in use", id)
		}
		return translate(err)
	}
	if tag.RowsAffected() == 0 {
		if _, err := s.GetImage(ctx, ownerID, id); err == nil {
			return errdefs.New(errdefs.Forbidden, "image %s is not owned by you", id)
		}
		return errdefs.NotFoundf("image %s not found", id)
	}
	return nil
}
