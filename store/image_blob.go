package store

import (
	"context"

	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// ImageTag is a Docker repo:tag naming one of an account's images.
type ImageTag struct {
	OwnerID string `db:"owner_id"`
	Repo    string `db:"repo"`
	Tag     string `db:"tag"`
	ImageID string `db:"image_id"`
}

// ownerMatch compares owner_id with a possibly NULL owner ($1).
const ownerMatch = `owner_id IS NOT DISTINCT FROM $1::uuid`

const sqlImageByOwnerDigest = `SELECT ` + imageColumns + ` FROM images WHERE ` + ownerMatch + ` AND manifest_digest = $2
ORDER BY created_at LIMIT 1`

// ImageByOwnerDigest returns the image with that manifest digest owned by
// owner (nil: the operators' images), or NotFound. It lets a second pull or
// load of the same content reuse the existing row.
func (s *Store) ImageByOwnerDigest(ctx context.Context, owner *string, digest string) (Image, error) {
	if owner != nil && !validUUID(*owner) {
		return Image{}, errdefs.NotFoundf("image %s not found", digest)
	}
	rows, _ := s.pool.Query(ctx, sqlImageByOwnerDigest, owner, digest)
	im, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Image])
	if err != nil {
		return Image{}, notFound(err, "image "+digest+" not found")
	}
	return im, nil
}

const sqlSetImageBlobs = `UPDATE images SET manifest_digest = $2, manifest = $3, config = $4, size_bytes = $5,
	updated_at = now() WHERE id = $1 RETURNING ` + imageColumns

// SetImageBlobs records the OCI manifest of an image whose row exists
// (e.g. a seeded image whose blobs were written later). NotFound if there
// is no such image.
func (s *Store) SetImageBlobs(ctx context.Context, id, digest string, manifest, config []byte, size int64) (Image, error) {
	if !validUUID(id) {
		return Image{}, errdefs.NotFoundf("image %s not found", id)
	}
	rows, _ := s.pool.Query(ctx, sqlSetImageBlobs, id, digest, nullJSON(manifest), nullJSON(config), size)
	im, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Image])
	if err != nil {
		return Image{}, notFound(err, "image "+id+" not found")
	}
	return im, nil
}

const sqlSetImageTag = `INSERT INTO image_tags (owner_id, repo, tag, image_id) VALUES ($1, $2, $3, $4)
ON CONFLICT (owner_id, repo, tag) DO UPDATE SET image_id = EXCLUDED.image_id`

// SetImageTag points owner's repo:tag at an image, moving the tag if it
// named another image. NotFound if the image or the owner does not exist.
func (s *Store) SetImageTag(ctx context.Context, owner, repo, tag, imageID string) error {
	if !validUUID(owner) || !validUUID(imageID) {
		return errdefs.NotFoundf("image %s not found", imageID)
	}
	if _, err := s.pool.Exec(ctx, sqlSetImageTag, owner, repo, tag, imageID); err != nil {
		if pgCode(err) == sqlForeignKeyViolation {
			return errdefs.NotFoundf("image %s or account %s not found", imageID, owner)
		}
		return translate(err)
	}
	return nil
}

const sqlDeleteImageTag = `DELETE FROM image_tags WHERE owner_id = $1 AND repo = $2 AND tag = $3 RETURNING image_id::text`

// DeleteImageTag removes owner's repo:tag and returns the image it named;
// NotFound if there is no such tag.
func (s *Store) DeleteImageTag(ctx context.Context, owner, repo, tag string) (string, error) {
	if !validUUID(owner) {
		return "", errdefs.NotFoundf("no such image: %s:%s", repo, tag)
	}
	var id string
	if err := s.pool.QueryRow(ctx, sqlDeleteImageTag, owner, repo, tag).Scan(&id); err != nil {
		return "", notFound(err, "no such image: "+repo+":"+tag)
	}
	return id, nil
}

const sqlImageTag = `SELECT owner_id::text, repo, tag, image_id::text FROM image_tags WHERE owner_id = $1 AND repo = $2 AND tag = $3`

// ImageTag returns owner's repo:tag, or NotFound.
func (s *Store) ImageTag(ctx context.Context, owner, repo, tag string) (ImageTag, error) {
	if !validUUID(owner) {
		return ImageTag{}, errdefs.NotFoundf("no such image: %s:%s", repo, tag)
	}
	rows, _ := s.pool.Query(ctx, sqlImageTag, owner, repo, tag)
	t, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[ImageTag])
	if err != nil {
		return ImageTag{}, notFound(err, "no such image: "+repo+":"+tag)
	}
	return t, nil
}

const sqlListImageTags = `SELECT owner_id::text, repo, tag, image_id::text FROM image_tags
WHERE owner_id = $1 AND ($2 = '' OR image_id::text = $2) ORDER BY repo, tag`

// ListImageTags returns owner's tags, only those of imageID when it is not
// empty.
func (s *Store) ListImageTags(ctx context.Context, owner, imageID string) ([]ImageTag, error) {
	if !validUUID(owner) {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, sqlListImageTags, owner, imageID)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ImageTag])
	return out, translate(err)
}

// visibleTo is visibleImage for an owner that may be nil (an operator, who
// sees every image).
const visibleTo = `($1::uuid IS NULL OR ` + visibleImage + `)`

const sqlImagesByIDPrefix = `SELECT ` + imageColumns + ` FROM images WHERE ` + visibleTo + `
	AND id::text LIKE $2 || '%' ORDER BY created_at LIMIT 2`

// ImagesByIDPrefix returns up to two images visible to owner (nil: any)
// whose id starts with prefix; two mean the prefix is ambiguous.
func (s *Store) ImagesByIDPrefix(ctx context.Context, owner *string, prefix string) ([]Image, error) {
	if owner != nil && !validUUID(*owner) {
		return nil, nil
	}
	for _, r := range prefix {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r == '-') {
			return nil, nil
		}
	}
	rows, _ := s.pool.Query(ctx, sqlImagesByIDPrefix, owner, prefix)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Image])
	return out, translate(err)
}

const sqlImagesByName = `SELECT ` + imageColumns + ` FROM images WHERE ` + visibleTo + `
	AND name = $2 AND ($3 = '' OR version = $3) AND state = 'active'
ORDER BY (owner_id IS NOT DISTINCT FROM $1::uuid) DESC, published_at DESC NULLS LAST, created_at DESC`

// ImagesByName returns the active images visible to owner (nil: any) with
// that name and, unless version is empty, that version: the owner's own
// first, then the newest.
func (s *Store) ImagesByName(ctx context.Context, owner *string, name, version string) ([]Image, error) {
	if owner != nil && !validUUID(*owner) {
		return nil, nil
	}
	rows, _ := s.pool.Query(ctx, sqlImagesByName, owner, name, version)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Image])
	return out, translate(err)
}

const sqlAllImages = `SELECT ` + imageColumns + ` FROM images ORDER BY type = 'docker', name, version, created_at`

// AllImages returns every image of every owner, for operators.
func (s *Store) AllImages(ctx context.Context) ([]Image, error) {
	rows, _ := s.pool.Query(ctx, sqlAllImages)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Image])
	return out, translate(err)
}

const sqlLayerVisible = `SELECT EXISTS (SELECT 1 FROM images WHERE ` + visibleTo + `
	AND manifest -> 'layers' @> jsonb_build_array(jsonb_build_object('digest', $2::text)))`

// LayerVisible reports whether digest is a layer of an image owner (nil: an
// operator, who sees all) can see. Only such a layer may be named by a
// manifest owner writes without carrying its bytes: knowing a digest is
// not the right to read it.
func (s *Store) LayerVisible(ctx context.Context, owner *string, digest string) (bool, error) {
	if owner != nil && !validUUID(*owner) {
		return false, nil
	}
	var ok bool
	if err := s.pool.QueryRow(ctx, sqlLayerVisible, owner, digest).Scan(&ok); err != nil {
		return false, translate(err)
	}
	return ok, nil
}

const sqlAccountImageBytes = `SELECT coalesce(sum(size_bytes), 0)::bigint FROM images WHERE owner_id = $1`

// AccountImageBytes is the total size of the images owner owns, what its
// image quota counts.
func (s *Store) AccountImageBytes(ctx context.Context, owner string) (int64, error) {
	if !validUUID(owner) {
		return 0, nil
	}
	var n int64
	if err := s.pool.QueryRow(ctx, sqlAccountImageBytes, owner).Scan(&n); err != nil {
		return 0, translate(err)
	}
	return n, nil
}
