// Owns: ellipse arithmetic, with no DOM: perimeter, normalisation, comparison, handle positions, and
// conversion to and from the API's ellipse object.
//
// Convention (same as the API and the CLI): centre (x, y) in image pixels with the origin at the
// centre of the top-left pixel, x right, y down; semi-axes a >= b; angle in radians in [0, pi) from
// +x towards +y. Working ellipses here are {x, y, a, b, angle}.

// Ramanujan's second approximation of the ellipse perimeter.
export function perimeter(a, b) {
  const h = ((a - b) / (a + b)) ** 2;
  return Math.PI * (a + b) * (1 + (3 * h) / (10 + Math.sqrt(4 - 3 * h)));
}

// a >= b and angle in [0, pi).
export function normalise(e) {
  let { a, b, angle } = e;
  const { x, y } = e;
  a = Math.abs(a);
  b = Math.abs(b);
  if (b > a) {
    [a, b] = [b, a];
    angle += Math.PI / 2;
  }
  angle %= Math.PI;
  if (angle < 0) angle += Math.PI;
  if (angle >= Math.PI) angle -= Math.PI;
  return { x, y, a, b, angle };
}

export function fromApi(p) {
  return { x: p.center_x, y: p.center_y, a: p.semi_axis_a, b: p.semi_axis_b, angle: p.angle_rad };
}

export function toApi(e) {
  const n = normalise(e);
  return { center_x: n.x, center_y: n.y, semi_axis_a: n.a, semi_axis_b: n.b, angle_rad: n.angle };
}

export function sameEllipse(p, q) {
  const m = normalise(p), n = normalise(q);
  // Near-circles: the angle does not matter.
  let dAngle = Math.abs(m.angle - n.angle);
  dAngle = Math.min(dAngle, Math.PI - dAngle);
  const angleMatters = Math.abs(m.a - m.b) > 0.5;
  return Math.abs(m.x - n.x) < 0.05 && Math.abs(m.y - n.y) < 0.05 && Math.abs(m.a - n.a) < 0.05 &&
    Math.abs(m.b - n.b) < 0.05 && (!angleMatters || dAngle < 1e-3);
}

// Handle positions in image pixels.
export function handles(e) {
  const c = Math.cos(e.angle), s = Math.sin(e.angle);
  return {
    center: { x: e.x, y: e.y },
    major1: { x: e.x + e.a * c, y: e.y + e.a * s },
    major2: { x: e.x - e.a * c, y: e.y - e.a * s },
    minor: { x: e.x - e.b * s, y: e.y + e.b * c },
  };
}
