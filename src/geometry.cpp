// Image geometry of the network passes (see geometry.h): the letterbox, the head-centred crop and
// the pixel-area reduction they share. No LibTorch here.
#include "geometry.h"
#include "net_frame.h"

#include "fetalhc/ellipse.h"

#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <vector>

namespace fetalhc {

Letterbox Letterbox::fit(cv::Size image, cv::Size net) {
    Letterbox lb;
    lb.net_size = net;
    lb.image_size = image;
    const double s = std::min(double(net.width) / image.width, double(net.height) / image.height);
    lb.resized = {std::clamp(int(std::lround(image.width * s)), 1, net.width),
                  std::clamp(int(std::lround(image.height * s)), 1, net.height)};
    lb.scale_x = double(lb.resized.width) / image.width;
    lb.scale_y = double(lb.resized.height) / image.height;
    lb.offset_x = (net.width - lb.resized.width) / 2;
    lb.offset_y = (net.height - lb.resized.height) / 2;
    return lb;
}

cv::Point2d Letterbox::to_image(cv::Point2d p) const {
    return {(p.x - offset_x + 0.5) / scale_x - 0.5, (p.y - offset_y + 0.5) / scale_y - 0.5};
}

cv::Point2d Letterbox::to_net(cv::Point2d p) const {
    return {scale_x * (p.x + 0.5) - 0.5 + offset_x, scale_y * (p.y + 0.5) - 0.5 + offset_y};
}

cv::Mat Letterbox::apply(const cv::Mat& img, int interpolation) const {
    cv::Mat canvas = cv::Mat::zeros(net_size, img.type());
    cv::Mat roi = canvas(cv::Rect(offset_x, offset_y, resized.width, resized.height));
    if (interpolation == cv::INTER_AREA)
        resize_area(img, resized).copyTo(roi);
    else
        cv::resize(img, roi, resized, 0, 0, interpolation);
    return canvas;
}

cv::Matx23d Letterbox::affine() const {
    return {scale_x, 0, 0.5 * scale_x - 0.5 + offset_x, 0, scale_y, 0.5 * scale_y - 0.5 + offset_y};
}

const NetFrame& net_frame(const Segmentation& s) {
    static const NetFrame none;
    return s.net ? *s.net : none;
}

void set_net_frame(Segmentation& s, cv::Mat probability, const cv::Matx23d& crop_to_net, cv::Mat input) {
    s.net = std::make_shared<const NetFrame>(NetFrame{std::move(probability), crop_to_net, std::move(input)});
}

cv::Matx23d to_net(const Segmentation& s) { return s.refined ? net_frame(s).crop_to_net : s.letterbox.affine(); }

Segmentation segmentation_at_image(cv::Mat probability) {
    Segmentation s;
    s.letterbox = Letterbox::fit(probability.size(), probability.size());  // the identity frame
    set_net_frame(s, std::move(probability));
    return s;
}

cv::Mat Segmentation::probability_full() const {
    const NetFrame& f = net_frame(*this);
    if (f.probability.empty()) return {};
    if (refined) {
        cv::Mat full;
        cv::warpAffine(f.probability, full, f.crop_to_net, letterbox.image_size, cv::INTER_LINEAR | cv::WARP_INVERSE_MAP,
                       cv::BORDER_CONSTANT, 0);
        return full;
    }
    const Letterbox& lb = letterbox;
    cv::Mat roi = f.probability(cv::Rect(lb.offset_x, lb.offset_y, lb.resized.width, lb.resized.height));
    cv::Mat full;
    cv::resize(roi, full, lb.image_size, 0, 0, cv::INTER_LINEAR);
    return full;
}

cv::Matx23d crop_frame(const Ellipse& e, cv::Size net, double margin) {
    const double s = std::min(net.width / (2 * e.a * margin), net.height / (2 * e.b * margin));
    const double c = std::cos(e.angle), sn = std::sin(e.angle);
    // crop = centre + s * R(-angle) * (p - c_e)
    cv::Matx23d A(s * c, s * sn, 0, -s * sn, s * c, 0);
    A(0, 2) = (net.width - 1) / 2.0 - (A(0, 0) * e.cx + A(0, 1) * e.cy);
    A(1, 2) = (net.height - 1) / 2.0 - (A(1, 0) * e.cx + A(1, 1) * e.cy);
    return A;
}

namespace {

// One source pixel's share of one reduced pixel along an axis.
struct AreaTap {
    int src, dst;
    float weight;
};

// Pixel-area weights for reducing n_src pixels to n_dst <= n_src, for reduced pixels d0..d1-1:
// reduced pixel d covers the source span [d s, (d+1) s), s = n_src / n_dst, and each source pixel
// counts by the length it shares with that span, over s. Sorted by dst.
std::vector<AreaTap> area_taps(int n_src, int n_dst, int d0, int d1) {
    const double s = double(n_src) / n_dst;
    std::vector<AreaTap> taps;
    taps.reserve(size_t(d1 - d0) * (size_t(s) + 2));
    for (int d = d0; d < d1; ++d) {
        const double lo = d * s, hi = std::min((d + 1) * s, double(n_src));
        for (int i = int(lo); i < n_src && i < hi; ++i) {
            const double w = std::min(hi, i + 1.0) - std::max(lo, double(i));
            if (w > 1e-9) taps.push_back({i, d, float(w / s)});
        }
    }
    return taps;
}

// The rectangle of an image reduced to `small` that the frame of M (small image -> frame) samples
// at `size`: the frame's corners mapped back, with a 2-pixel margin for the bilinear taps. Clipped
// to the reduced image (empty when the frame lies wholly outside it).
cv::Rect sampled_part(const cv::Matx23d& M, cv::Size size, cv::Size small) {
    cv::Matx23d Mi;
    cv::invertAffineTransform(M, Mi);
    double x0 = 1e300, y0 = 1e300, x1 = -1e300, y1 = -1e300;
    for (const cv::Point2d q : {cv::Point2d(-1, -1), cv::Point2d(size.width, -1), cv::Point2d(-1, size.height),
                                cv::Point2d(size.width, size.height)}) {
        const double x = Mi(0, 0) * q.x + Mi(0, 1) * q.y + Mi(0, 2), y = Mi(1, 0) * q.x + Mi(1, 1) * q.y + Mi(1, 2);
        x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
    const double lim = 4.0 * (small.width + small.height);  // keeps the casts below in range
    const int px = int(std::floor(std::clamp(x0, -lim, lim))) - 2, py = int(std::floor(std::clamp(y0, -lim, lim))) - 2;
    const int qx = int(std::ceil(std::clamp(x1, -lim, lim))) + 3, qy = int(std::ceil(std::clamp(y1, -lim, lim))) + 3;
    return cv::Rect(px, py, qx - px, qy - py) & cv::Rect({0, 0}, small);
}

}  // namespace

cv::Mat resize_area(const cv::Mat& img, cv::Size size) { return resize_area(img, size, cv::Rect({0, 0}, size)); }

cv::Mat resize_area(const cv::Mat& img, cv::Size size, cv::Rect part) {
    if (part.empty()) part = cv::Rect({0, 0}, size);
    CV_Assert((part & cv::Rect({0, 0}, size)) == part);
    // OpenCV's own path is already fast for whole-number factors (and rounds their halves up).
    const bool whole_factors = img.cols % size.width == 0 && img.rows % size.height == 0;
    if (img.type() != CV_8UC1 || size.width > img.cols || size.height > img.rows || whole_factors) {
        cv::Mat full;
        cv::resize(img, full, size, 0, 0, cv::INTER_AREA);
        return full(part).clone();
    }
    // Separable: each reduced row is a weighted sum of source rows (contiguous, vectorised), which
    // is then reduced along x.
    const auto tx = area_taps(img.cols, size.width, part.x, part.x + part.width);
    const auto ty = area_taps(img.rows, size.height, part.y, part.y + part.height);
    const int c0 = tx.front().src, c1 = tx.back().src + 1;  // source columns the part needs
    cv::Mat out(part.size(), CV_8U);
    std::vector<float> rows(size_t(c1 - c0)), line(size_t(part.width));
    size_t t = 0;
    for (int d = part.y; d < part.y + part.height; ++d) {
        std::fill(rows.begin(), rows.end(), 0.f);
        for (; t < ty.size() && ty[t].dst == d; ++t) {
            const uchar* src = img.ptr<uchar>(ty[t].src) + c0;
            const float w = ty[t].weight;
            float* acc = rows.data();
            for (int x = 0; x < c1 - c0; ++x) acc[x] += w * src[x];
        }
        std::fill(line.begin(), line.end(), 0.f);
        for (const AreaTap& h : tx) line[size_t(h.dst - part.x)] += h.weight * rows[size_t(h.src - c0)];
        uchar* o = out.ptr<uchar>(d - part.y);
        for (int x = 0; x < part.width; ++x) o[x] = cv::saturate_cast<uchar>(line[size_t(x)]);
    }
    return out;
}

cv::Mat warp_to_frame(const cv::Mat& img, const cv::Matx23d& A, cv::Size size) {
    const double zoom = frame_zoom(A);
    cv::Mat src = img;
    cv::Matx23d M = A;
    if (zoom < 1 / 1.5) {
        // Reduce first (area averaging), then map the reduced pixels: p_small = k (p + 0.5) - 0.5.
        const double k = std::min(1.0, 1.5 * zoom);
        const cv::Size small(std::max(1, int(std::lround(img.cols * k))), std::max(1, int(std::lround(img.rows * k))));
        const double kx = double(small.width) / img.cols, ky = double(small.height) / img.rows;
        // A = M' * S where S maps image -> small; M' = A * S^-1.
        for (int r = 0; r < 2; ++r) {
            const double a0 = A(r, 0), a1 = A(r, 1);
            M(r, 0) = a0 / kx;
            M(r, 1) = a1 / ky;
            M(r, 2) = A(r, 2) + a0 * (0.5 / kx - 0.5) + a1 * (0.5 / ky - 0.5);
        }
        // Only the part of the reduced image that the frame samples is computed; M is moved to
        // that part's origin.
        const cv::Rect part = sampled_part(M, size, small);
        if (part.empty()) return cv::Mat::zeros(size, img.type());
        src = resize_area(img, small, part);
        for (int r = 0; r < 2; ++r) M(r, 2) += M(r, 0) * part.x + M(r, 1) * part.y;
    }
    cv::Mat out;
    cv::warpAffine(src, out, M, size, cv::INTER_LINEAR, cv::BORDER_CONSTANT, 0);
    return out;
}

}  // namespace fetalhc
