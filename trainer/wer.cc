// trainer/wer.cc — WER/CER scoring as WeNet's tools/compute-wer.py and Kaldi's compute-wer (see
// wer.h for the conventions). The Unicode tables are generated from Python's unicodedata (Unicode
// 14.0), unassigned gaps merged into their neighbours.
#include "trainer/wer.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <unordered_map>
#include <unordered_set>

namespace moeasr {
namespace {

struct CodeRange {
  char32_t lo;
  char32_t hi;  // inclusive
};

// General category P* (Pc Pd Ps Pe Pi Pf Po): what jiwer's RemovePunctuation deletes.
constexpr CodeRange kPunctuation[] = {
    {0x21, 0x23},       {0x25, 0x2A},       {0x2C, 0x2F},       {0x3A, 0x3B},       {0x3F, 0x40},
    {0x5B, 0x5D},       {0x5F, 0x5F},       {0x7B, 0x7B},       {0x7D, 0x7D},       {0xA1, 0xA1},
    {0xA7, 0xA7},       {0xAB, 0xAB},       {0xB6, 0xB7},       {0xBB, 0xBB},       {0xBF, 0xBF},
    {0x37E, 0x37E},     {0x387, 0x387},     {0x55A, 0x55F},     {0x589, 0x58A},     {0x5BE, 0x5BE},
    {0x5C0, 0x5C0},     {0x5C3, 0x5C3},     {0x5C6, 0x5C6},     {0x5F3, 0x5F4},     {0x609, 0x60A},
    {0x60C, 0x60D},     {0x61B, 0x61B},     {0x61D, 0x61F},     {0x66A, 0x66D},     {0x6D4, 0x6D4},
    {0x700, 0x70D},     {0x7F7, 0x7F9},     {0x830, 0x83E},     {0x85E, 0x85E},     {0x964, 0x965},
    {0x970, 0x970},     {0x9FD, 0x9FD},     {0xA76, 0xA76},     {0xAF0, 0xAF0},     {0xC77, 0xC77},
    {0xC84, 0xC84},     {0xDF4, 0xDF4},     {0xE4F, 0xE4F},     {0xE5A, 0xE5B},     {0xF04, 0xF12},
    {0xF14, 0xF14},     {0xF3A, 0xF3D},     {0xF85, 0xF85},     {0xFD0, 0xFD4},     {0xFD9, 0xFDA},
    {0x104A, 0x104F},   {0x10FB, 0x10FB},   {0x1360, 0x1368},   {0x1400, 0x1400},   {0x166E, 0x166E},
    {0x169B, 0x169C},   {0x16EB, 0x16ED},   {0x1735, 0x1736},   {0x17D4, 0x17D6},   {0x17D8, 0x17DA},
    {0x1800, 0x180A},   {0x1944, 0x1945},   {0x1A1E, 0x1A1F},   {0x1AA0, 0x1AA6},   {0x1AA8, 0x1AAD},
    {0x1B5A, 0x1B60},   {0x1B7D, 0x1B7E},   {0x1BFC, 0x1BFF},   {0x1C3B, 0x1C3F},   {0x1C7E, 0x1C7F},
    {0x1CC0, 0x1CC7},   {0x1CD3, 0x1CD3},   {0x2010, 0x2027},   {0x2030, 0x2043},   {0x2045, 0x2051},
    {0x2053, 0x205E},   {0x207D, 0x207E},   {0x208D, 0x208E},   {0x2308, 0x230B},   {0x2329, 0x232A},
    {0x2768, 0x2775},   {0x27C5, 0x27C6},   {0x27E6, 0x27EF},   {0x2983, 0x2998},   {0x29D8, 0x29DB},
    {0x29FC, 0x29FD},   {0x2CF9, 0x2CFC},   {0x2CFE, 0x2CFF},   {0x2D70, 0x2D70},   {0x2E00, 0x2E2E},
    {0x2E30, 0x2E4F},   {0x2E52, 0x2E5D},   {0x3001, 0x3003},   {0x3008, 0x3011},   {0x3014, 0x301F},
    {0x3030, 0x3030},   {0x303D, 0x303D},   {0x30A0, 0x30A0},   {0x30FB, 0x30FB},   {0xA4FE, 0xA4FF},
    {0xA60D, 0xA60F},   {0xA673, 0xA673},   {0xA67E, 0xA67E},   {0xA6F2, 0xA6F7},   {0xA874, 0xA877},
    {0xA8CE, 0xA8CF},   {0xA8F8, 0xA8FA},   {0xA8FC, 0xA8FC},   {0xA92E, 0xA92F},   {0xA95F, 0xA95F},
    {0xA9C1, 0xA9CD},   {0xA9DE, 0xA9DF},   {0xAA5C, 0xAA5F},   {0xAADE, 0xAADF},   {0xAAF0, 0xAAF1},
    {0xABEB, 0xABEB},   {0xFD3E, 0xFD3F},   {0xFE10, 0xFE19},   {0xFE30, 0xFE61},   {0xFE63, 0xFE63},
    {0xFE68, 0xFE68},   {0xFE6A, 0xFE6B},   {0xFF01, 0xFF03},   {0xFF05, 0xFF0A},   {0xFF0C, 0xFF0F},
    {0xFF1A, 0xFF1B},   {0xFF1F, 0xFF20},   {0xFF3B, 0xFF3D},   {0xFF3F, 0xFF3F},   {0xFF5B, 0xFF5B},
    {0xFF5D, 0xFF5D},   {0xFF5F, 0xFF65},   {0x10100, 0x10102}, {0x1039F, 0x1039F}, {0x103D0, 0x103D0},
    {0x1056F, 0x1056F}, {0x10857, 0x10857}, {0x1091F, 0x1091F}, {0x1093F, 0x1093F}, {0x10A50, 0x10A58},
    {0x10A7F, 0x10A7F}, {0x10AF0, 0x10AF6}, {0x10B39, 0x10B3F}, {0x10B99, 0x10B9C}, {0x10EAD, 0x10EAD},
    {0x10F55, 0x10F59}, {0x10F86, 0x10F89}, {0x11047, 0x1104D}, {0x110BB, 0x110BC}, {0x110BE, 0x110C1},
    {0x11140, 0x11143}, {0x11174, 0x11175}, {0x111C5, 0x111C8}, {0x111CD, 0x111CD}, {0x111DB, 0x111DB},
    {0x111DD, 0x111DF}, {0x11238, 0x1123D}, {0x112A9, 0x112A9}, {0x1144B, 0x1144F}, {0x1145A, 0x1145D},
    {0x114C6, 0x114C6}, {0x115C1, 0x115D7}, {0x11641, 0x11643}, {0x11660, 0x1166C}, {0x116B9, 0x116B9},
    {0x1173C, 0x1173E}, {0x1183B, 0x1183B}, {0x11944, 0x11946}, {0x119E2, 0x119E2}, {0x11A3F, 0x11A46},
    {0x11A9A, 0x11A9C}, {0x11A9E, 0x11AA2}, {0x11C41, 0x11C45}, {0x11C70, 0x11C71}, {0x11EF7, 0x11EF8},
    {0x11FFF, 0x11FFF}, {0x12470, 0x12474}, {0x12FF1, 0x12FF2}, {0x16A6E, 0x16A6F}, {0x16AF5, 0x16AF5},
    {0x16B37, 0x16B3B}, {0x16B44, 0x16B44}, {0x16E97, 0x16E9A}, {0x16FE2, 0x16FE2}, {0x1BC9F, 0x1BC9F},
    {0x1DA87, 0x1DA8B}, {0x1E95E, 0x1E95F},
};

// East Asian width A, F or W: two columns in WeNet's width().
constexpr CodeRange kWideOrAmbiguous[] = {
    {0xA1, 0xA1},       {0xA4, 0xA4},        {0xA7, 0xA8},       {0xAA, 0xAA},       {0xAD, 0xAE},
    {0xB0, 0xB4},       {0xB6, 0xBA},        {0xBC, 0xBF},       {0xC6, 0xC6},       {0xD0, 0xD0},
    {0xD7, 0xD8},       {0xDE, 0xE1},        {0xE6, 0xE6},       {0xE8, 0xEA},       {0xEC, 0xED},
    {0xF0, 0xF0},       {0xF2, 0xF3},        {0xF7, 0xFA},       {0xFC, 0xFC},       {0xFE, 0xFE},
    {0x101, 0x101},     {0x111, 0x111},      {0x113, 0x113},     {0x11B, 0x11B},     {0x126, 0x127},
    {0x12B, 0x12B},     {0x131, 0x133},      {0x138, 0x138},     {0x13F, 0x142},     {0x144, 0x144},
    {0x148, 0x14B},     {0x14D, 0x14D},      {0x152, 0x153},     {0x166, 0x167},     {0x16B, 0x16B},
    {0x1CE, 0x1CE},     {0x1D0, 0x1D0},      {0x1D2, 0x1D2},     {0x1D4, 0x1D4},     {0x1D6, 0x1D6},
    {0x1D8, 0x1D8},     {0x1DA, 0x1DA},      {0x1DC, 0x1DC},     {0x251, 0x251},     {0x261, 0x261},
    {0x2C4, 0x2C4},     {0x2C7, 0x2C7},      {0x2C9, 0x2CB},     {0x2CD, 0x2CD},     {0x2D0, 0x2D0},
    {0x2D8, 0x2DB},     {0x2DD, 0x2DD},      {0x2DF, 0x2DF},     {0x300, 0x36F},     {0x391, 0x3A9},
    {0x3B1, 0x3C1},     {0x3C3, 0x3C9},      {0x401, 0x401},     {0x410, 0x44F},     {0x451, 0x451},
    {0x1100, 0x115F},   {0x2010, 0x2010},    {0x2013, 0x2016},   {0x2018, 0x2019},   {0x201C, 0x201D},
    {0x2020, 0x2022},   {0x2024, 0x2027},    {0x2030, 0x2030},   {0x2032, 0x2033},   {0x2035, 0x2035},
    {0x203B, 0x203B},   {0x203E, 0x203E},    {0x2074, 0x2074},   {0x207F, 0x207F},   {0x2081, 0x2084},
    {0x20AC, 0x20AC},   {0x2103, 0x2103},    {0x2105, 0x2105},   {0x2109, 0x2109},   {0x2113, 0x2113},
    {0x2116, 0x2116},   {0x2121, 0x2122},    {0x2126, 0x2126},   {0x212B, 0x212B},   {0x2153, 0x2154},
    {0x215B, 0x215E},   {0x2160, 0x216B},    {0x2170, 0x2179},   {0x2189, 0x2189},   {0x2190, 0x2199},
    {0x21B8, 0x21B9},   {0x21D2, 0x21D2},    {0x21D4, 0x21D4},   {0x21E7, 0x21E7},   {0x2200, 0x2200},
    {0x2202, 0x2203},   {0x2207, 0x2208},    {0x220B, 0x220B},   {0x220F, 0x220F},   {0x2211, 0x2211},
    {0x2215, 0x2215},   {0x221A, 0x221A},    {0x221D, 0x2220},   {0x2223, 0x2223},   {0x2225, 0x2225},
    {0x2227, 0x222C},   {0x222E, 0x222E},    {0x2234, 0x2237},   {0x223C, 0x223D},   {0x2248, 0x2248},
    {0x224C, 0x224C},   {0x2252, 0x2252},    {0x2260, 0x2261},   {0x2264, 0x2267},   {0x226A, 0x226B},
    {0x226E, 0x226F},   {0x2282, 0x2283},    {0x2286, 0x2287},   {0x2295, 0x2295},   {0x2299, 0x2299},
    {0x22A5, 0x22A5},   {0x22BF, 0x22BF},    {0x2312, 0x2312},   {0x231A, 0x231B},   {0x2329, 0x232A},
    {0x23E9, 0x23EC},   {0x23F0, 0x23F0},    {0x23F3, 0x23F3},   {0x2460, 0x24E9},   {0x24EB, 0x254B},
    {0x2550, 0x2573},   {0x2580, 0x258F},    {0x2592, 0x2595},   {0x25A0, 0x25A1},   {0x25A3, 0x25A9},
    {0x25B2, 0x25B3},   {0x25B6, 0x25B7},    {0x25BC, 0x25BD},   {0x25C0, 0x25C1},   {0x25C6, 0x25C8},
    {0x25CB, 0x25CB},   {0x25CE, 0x25D1},    {0x25E2, 0x25E5},   {0x25EF, 0x25EF},   {0x25FD, 0x25FE},
    {0x2605, 0x2606},   {0x2609, 0x2609},    {0x260E, 0x260F},   {0x2614, 0x2615},   {0x261C, 0x261C},
    {0x261E, 0x261E},   {0x2640, 0x2640},    {0x2642, 0x2642},   {0x2648, 0x2653},   {0x2660, 0x2661},
    {0x2663, 0x2665},   {0x2667, 0x266A},    {0x266C, 0x266D},   {0x266F, 0x266F},   {0x267F, 0x267F},
    {0x2693, 0x2693},   {0x269E, 0x269F},    {0x26A1, 0x26A1},   {0x26AA, 0x26AB},   {0x26BD, 0x26BF},
    {0x26C4, 0x26E1},   {0x26E3, 0x26E3},    {0x26E8, 0x26FF},   {0x2705, 0x2705},   {0x270A, 0x270B},
    {0x2728, 0x2728},   {0x273D, 0x273D},    {0x274C, 0x274C},   {0x274E, 0x274E},   {0x2753, 0x2755},
    {0x2757, 0x2757},   {0x2776, 0x277F},    {0x2795, 0x2797},   {0x27B0, 0x27B0},   {0x27BF, 0x27BF},
    {0x2B1B, 0x2B1C},   {0x2B50, 0x2B50},    {0x2B55, 0x2B59},   {0x2E80, 0x303E},   {0x3041, 0x4DBF},
    {0x4E00, 0xA4C6},   {0xA960, 0xA97C},    {0xAC00, 0xD7A3},   {0xE000, 0xFAD9},   {0xFE00, 0xFE19},
    {0xFE30, 0xFE6B},   {0xFF01, 0xFF60},    {0xFFE0, 0xFFE6},   {0xFFFD, 0xFFFD},   {0x16FE0, 0x1B2FB},
    {0x1F004, 0x1F004}, {0x1F0CF, 0x1F0CF},  {0x1F100, 0x1F10A}, {0x1F110, 0x1F12D}, {0x1F130, 0x1F169},
    {0x1F170, 0x1F1AC}, {0x1F200, 0x1F320},  {0x1F32D, 0x1F335}, {0x1F337, 0x1F37C}, {0x1F37E, 0x1F393},
    {0x1F3A0, 0x1F3CA}, {0x1F3CF, 0x1F3D3},  {0x1F3E0, 0x1F3F0}, {0x1F3F4, 0x1F3F4}, {0x1F3F8, 0x1F43E},
    {0x1F440, 0x1F440}, {0x1F442, 0x1F4FC},  {0x1F4FF, 0x1F53D}, {0x1F54B, 0x1F54E}, {0x1F550, 0x1F567},
    {0x1F57A, 0x1F57A}, {0x1F595, 0x1F596},  {0x1F5A4, 0x1F5A4}, {0x1F5FB, 0x1F64F}, {0x1F680, 0x1F6C5},
    {0x1F6CC, 0x1F6CC}, {0x1F6D0, 0x1F6D2},  {0x1F6D5, 0x1F6DF}, {0x1F6EB, 0x1F6EC}, {0x1F6F4, 0x1F6FC},
    {0x1F7E0, 0x1F7F0}, {0x1F90C, 0x1F93A},  {0x1F93C, 0x1F945}, {0x1F947, 0x1F9FF}, {0x1FA70, 0x1FAF6},
    {0x20000, 0x3134A}, {0xE0100, 0x10FFFD},
};

// Names starting "LATIN CAPITAL LETTER" or "LATIN SMALL LETTER": WeNet's "English" cluster.
constexpr CodeRange kLatinLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xC0, 0xD6},       {0xD8, 0xF6},       {0xF8, 0x131},
    {0x134, 0x151},     {0x154, 0x1A5},     {0x1A7, 0x1A9},     {0x1AB, 0x1BA},     {0x1BC, 0x1BD},
    {0x1C4, 0x261},     {0x263, 0x269},     {0x26B, 0x273},     {0x275, 0x275},     {0x277, 0x27F},
    {0x282, 0x28E},     {0x290, 0x293},     {0x29A, 0x29A},     {0x29D, 0x29E},     {0x2A0, 0x2A0},
    {0x2A3, 0x2AB},     {0x2AE, 0x2AF},     {0x1D02, 0x1D02},   {0x1D08, 0x1D09},   {0x1D11, 0x1D14},
    {0x1D16, 0x1D17},   {0x1D1D, 0x1D1F},   {0x1D6B, 0x1D77},   {0x1D79, 0x1D7A},   {0x1D7C, 0x1D7D},
    {0x1D7F, 0x1D9A},   {0x1E00, 0x1EFF},   {0x2184, 0x2184},   {0x2C60, 0x2C7A},   {0x2C7E, 0x2C7F},
    {0xA722, 0xA72F},   {0xA732, 0xA76F},   {0xA771, 0xA775},   {0xA777, 0xA787},   {0xA78B, 0xA78E},
    {0xA790, 0xA7AE},   {0xA7B0, 0xA7D9},   {0xA7F5, 0xA7F6},   {0xAB30, 0xAB45},   {0xAB47, 0xAB5A},
    {0xAB60, 0xAB64},   {0xAB66, 0xAB68},   {0x1DF00, 0x1DF01}, {0x1DF03, 0x1DF03}, {0x1DF05, 0x1DF09},
    {0x1DF0B, 0x1DF0D}, {0x1DF11, 0x1DF1E},
};

// "CJK UNIFIED IDEOGRAPH" or "CJK COMPATIBILITY IDEOGRAPH": WeNet's "Mandarin" cluster.
constexpr CodeRange kCjkIdeographs[] = {
    {0x3400, 0x4DBF}, {0x4E00, 0x9FFF}, {0xF900, 0xFAD9}, {0x20000, 0x3134A}};

// "HIRAGANA LETTER": WeNet's "Japanese" cluster.
constexpr CodeRange kHiraganaLetters[] = {
    {0x3041, 0x3096}, {0x1B001, 0x1B001}, {0x1B11F, 0x1B11F}, {0x1B150, 0x1B152}};

// Names starting "DIGIT": WeNet's "Number" cluster.
constexpr CodeRange kDigits[] = {{0x30, 0x39}, {0x2488, 0x2490}, {0x1F100, 0x1F10A}};

// Names starting AMPERSAND, APOSTROPHE, COMMERCIAL AT, DEGREE CELSIUS, EQUALS SIGN, FULL STOP,
// HYPHEN-MINUS, LOW LINE, NUMBER SIGN, PLUS SIGN or SEMICOLON: ignored when WeNet clusters a token.
constexpr CodeRange kClusterIgnored[] = {
    {0x23, 0x23},     {0x26, 0x27},     {0x2B, 0x2B},     {0x2D, 0x2E},     {0x3B, 0x3B},
    {0x3D, 0x3D},     {0x40, 0x40},     {0x5F, 0x5F},     {0x2103, 0x2103}, {0x2971, 0x2971},
    {0x29E3, 0x29E4}, {0x2A22, 0x2A28}, {0x2A2D, 0x2A2E}, {0x2A39, 0x2A39}, {0x2A66, 0x2A66},
    {0x2A71, 0x2A73}, {0x2A77, 0x2A77}, {0x2AAE, 0x2AAE}, {0x2B40, 0x2B40}, {0x2BF9, 0x2BF9}};

template <size_t K>
bool in_ranges(const CodeRange (&ranges)[K], char32_t cp) {
  const CodeRange* end = ranges + K;
  const CodeRange* it =
      std::lower_bound(ranges, end, cp, [](const CodeRange& r, char32_t c) { return r.hi < c; });
  return it != end && it->lo <= cp;
}

constexpr char32_t kReplacementChar = 0xFFFD;
constexpr const char* kRule = "===========================================================================";

// Decodes the UTF-8 sequence at s[pos]: its length in bytes, or 0 when it is not valid UTF-8.
size_t decode_utf8_at(const std::string& s, size_t pos, char32_t* cp) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t len = 0;
  char32_t value = 0;
  char32_t min_value = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, value = b0 & 0x1F, min_value = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, value = b0 & 0x0F, min_value = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, value = b0 & 0x07, min_value = 0x10000;
  } else {
    return 0;
  }
  if (pos + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[pos + k]);
    if ((b & 0xC0) != 0x80) return 0;
    value = (value << 6) | (b & 0x3F);
  }
  if (value < min_value || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) return 0;
  *cp = value;
  return len;
}

// The code points of `s`; an invalid byte reads as U+FFFD.
std::vector<char32_t> decode_utf8(const std::string& s) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    char32_t cp = 0;
    const size_t len = decode_utf8_at(s, pos, &cp);
    cps.push_back(len == 0 ? kReplacementChar : cp);
    pos += len == 0 ? 1 : len;
  }
  return cps;
}

void append_utf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Python's str.isspace() set, which str.split() splits on.
bool is_space(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Simple (one code point to one) upper-case mapping for ASCII, Latin-1, Latin Extended-A, Greek,
// Cyrillic and fullwidth Latin; everything else is returned as it is.
char32_t to_upper(char32_t cp) {
  if (cp >= 'a' && cp <= 'z') return cp - 0x20;
  if (cp < 0xB5) return cp;
  if (cp == 0xB5) return 0x39C;                                    // micro sign -> Greek MU
  if ((cp >= 0xE0 && cp <= 0xFE) && cp != 0xF7) return cp - 0x20;  // à..þ
  if (cp == 0xFF) return 0x178;                                    // ÿ
  if (cp >= 0x100 && cp <= 0x17F) {
    if (cp == 0x131) return 'I';  // dotless i
    if (cp == 0x17F) return 'S';  // long s
    if (cp == 0x130 || cp == 0x138 || cp == 0x149 || cp == 0x178) return cp;
    const bool upper_is_even = (cp <= 0x137) || (cp >= 0x14A && cp <= 0x177);
    if (upper_is_even) return (cp % 2 == 1) ? cp - 1 : cp;
    return (cp % 2 == 0) ? cp - 1 : cp;  // 0x139..0x148, 0x179..0x17E: odd is upper
  }
  if (cp == 0x3AC) return 0x386;
  if (cp >= 0x3AD && cp <= 0x3AF) return cp - 0x25;
  if (cp == 0x3C2) return 0x3A3;  // final sigma
  if ((cp >= 0x3B1 && cp <= 0x3C1) || (cp >= 0x3C3 && cp <= 0x3CB)) return cp - 0x20;
  if (cp == 0x3CC) return 0x38C;
  if (cp == 0x3CD || cp == 0x3CE) return cp - 0x3F;
  if (cp >= 0x430 && cp <= 0x44F) return cp - 0x20;
  if (cp >= 0x450 && cp <= 0x45F) return cp - 0x50;
  if (cp >= 0xFF41 && cp <= 0xFF5A) return cp - 0x20;
  return cp;
}

const char* cluster_of_code_point(char32_t cp) {
  if (in_ranges(kDigits, cp)) return "Number";
  if (in_ranges(kCjkIdeographs, cp)) return "Mandarin";
  if (in_ranges(kLatinLetters, cp)) return "English";
  if (in_ranges(kHiraganaLetters, cp)) return "Japanese";
  return "Other";
}

// WeNet prints "%4.2f".
std::string format_percent(double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%4.2f", value);
  return buf;
}

// Kaldi computes its percentages in float and divides by zero when nothing was scored.
std::string kaldi_percent(int64_t errors, int64_t total) {
  if (total == 0) return errors > 0 ? "inf" : "nan";
  const float pct = static_cast<float>(100.0 * static_cast<float>(errors) / static_cast<float>(total));
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f", static_cast<double>(pct));
  return buf;
}

void write_counts(const WerCounts& c, std::ostream& out) {
  out << "N=" << c.n << " C=" << c.c << " S=" << c.s << " D=" << c.d << " I=" << c.i;
}

std::string key_list(const std::vector<std::string>& keys) {
  constexpr size_t kShown = 10;
  std::string list;
  for (size_t k = 0; k < keys.size() && k < kShown; ++k) list += (k ? ", " : "") + keys[k];
  if (keys.size() > kShown) list += ", ...";
  return list;
}

// The alignment's operations at each cell; kStart marks (0, 0).
enum class Step : uint8_t { kCorrect, kSubstitution, kDeletion, kInsertion, kStart };

}  // namespace

bool is_valid_utf8(const std::string& text) {
  for (size_t pos = 0; pos < text.size();) {
    char32_t cp = 0;
    const size_t len = decode_utf8_at(text, pos, &cp);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

Alignment align_tokens(const std::vector<std::string>& ref, const std::vector<std::string>& hyp) {
  const size_t n = ref.size();
  const size_t m = hyp.size();
  // Compare token ids, not strings, in the O(n m) loop.
  std::unordered_map<std::string, int32_t> ids;
  std::vector<int32_t> r(n), h(m);
  for (size_t i = 0; i < n; ++i) r[i] = ids.emplace(ref[i], static_cast<int32_t>(ids.size())).first->second;
  for (size_t j = 0; j < m; ++j) h[j] = ids.emplace(hyp[j], static_cast<int32_t>(ids.size())).first->second;

  const size_t cols = m + 1;
  std::vector<Step> step((n + 1) * cols);
  std::vector<int64_t> prev(cols), cur(cols);
  step[0] = Step::kStart;
  for (size_t j = 0; j <= m; ++j) prev[j] = static_cast<int64_t>(j);
  for (size_t j = 1; j <= m; ++j) step[j] = Step::kInsertion;
  for (size_t i = 1; i <= n; ++i) {
    cur[0] = static_cast<int64_t>(i);
    step[i * cols] = Step::kDeletion;
    for (size_t j = 1; j <= m; ++j) {
      // WeNet's order: deletion, then insertion if strictly cheaper, then the diagonal if strictly cheaper.
      int64_t best = prev[j] + 1;
      Step s = Step::kDeletion;
      if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1, s = Step::kInsertion;
      const bool same = r[i - 1] == h[j - 1];
      const int64_t diag = prev[j - 1] + (same ? 0 : 1);
      if (diag < best) best = diag, s = same ? Step::kCorrect : Step::kSubstitution;
      cur[j] = best;
      step[i * cols + j] = s;
    }
    std::swap(prev, cur);
  }

  Alignment result;
  size_t i = n;
  size_t j = m;
  while (step[i * cols + j] != Step::kStart) {
    AlignedPair pair;
    switch (step[i * cols + j]) {
      case Step::kCorrect:
      case Step::kSubstitution:
        pair.op = step[i * cols + j] == Step::kCorrect ? EditOp::kCorrect : EditOp::kSubstitution;
        pair.ref = static_cast<int32_t>(--i);
        pair.hyp = static_cast<int32_t>(--j);
        break;
      case Step::kDeletion:
        pair.op = EditOp::kDeletion;
        pair.ref = static_cast<int32_t>(--i);
        break;
      case Step::kInsertion:
        pair.op = EditOp::kInsertion;
        pair.hyp = static_cast<int32_t>(--j);
        break;
      case Step::kStart: break;
    }
    result.pairs.push_back(pair);
  }
  std::reverse(result.pairs.begin(), result.pairs.end());
  WerCounts& c = result.counts;
  for (const AlignedPair& p : result.pairs) {
    switch (p.op) {
      case EditOp::kCorrect: ++c.c; break;
      case EditOp::kSubstitution: ++c.s; break;
      case EditOp::kDeletion: ++c.d; break;
      case EditOp::kInsertion: ++c.i; break;
    }
  }
  c.n = c.c + c.s + c.d;
  CHECK_EQ(c.n, static_cast<int64_t>(n));
  return result;
}

std::vector<std::string> tokenize_for_wer(const std::string& text, const WerOptions& options) {
  std::vector<char32_t> cps = decode_utf8(text);
  if (options.remove_tags) {
    // WeNet's stripoff_tags, token by token: from '<' through the next '>' (or the token's end).
    std::vector<char32_t> kept;
    for (size_t k = 0; k < cps.size();) {
      if (cps[k] != '<') {
        kept.push_back(cps[k++]);
        continue;
      }
      while (k < cps.size() && cps[k] != '>' && !is_space(cps[k])) ++k;
      if (k < cps.size() && cps[k] == '>') ++k;
    }
    cps.swap(kept);
  }
  if (options.remove_punctuation) {
    cps.erase(std::remove_if(cps.begin(), cps.end(), [](char32_t cp) { return in_ranges(kPunctuation, cp); }),
              cps.end());
  }
  if (options.case_insensitive) {
    for (char32_t& cp : cps) cp = to_upper(cp);
  }

  std::vector<std::string> tokens;
  std::string word;
  bool space_pending = false;
  for (char32_t cp : cps) {
    if (is_space(cp)) {
      if (!word.empty()) tokens.push_back(std::move(word)), word.clear();
      space_pending = !tokens.empty();
      continue;
    }
    if (options.mode == WerMode::kWord) {
      append_utf8(cp, &word);
    } else {
      if (space_pending && options.keep_spaces) tokens.emplace_back(" ");
      std::string token;
      append_utf8(cp, &token);
      tokens.push_back(std::move(token));
    }
    space_pending = false;
  }
  if (!word.empty()) tokens.push_back(std::move(word));
  return tokens;
}

std::string wenet_token_cluster(const std::string& token) {
  const char* cluster = nullptr;
  for (char32_t cp : decode_utf8(token)) {
    if (in_ranges(kClusterIgnored, cp)) continue;
    const char* c = cluster_of_code_point(cp);
    if (!std::strcmp(c, "Other")) return "Other";
    if (cluster && std::strcmp(cluster, c)) return "Other";
    cluster = c;
  }
  return cluster ? cluster : "Other";
}

int64_t display_width(const std::string& token) {
  int64_t width = 0;
  for (char32_t cp : decode_utf8(token)) width += in_ranges(kWideOrAmbiguous, cp) ? 2 : 1;
  return width;
}

StatusOr<std::vector<TextEntry>> read_kaldi_text(const std::string& path, const std::string& what) {
  const std::string expect = "; expected a Kaldi-style text file, one 'key text' line per utterance (UTF-8)";
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return not_found_error(what + " file '" + path + "' cannot be read: " + std::strerror(errno) + expect);
  }
  if (S_ISDIR(st.st_mode))
    return invalid_argument_error(what + " file '" + path + "' is a directory" + expect);
  std::ifstream in(path, std::ios::binary);
  if (!in) return io_error(what + " file '" + path + "' cannot be opened: " + std::strerror(errno) + expect);

  std::vector<TextEntry> entries;
  std::unordered_map<std::string, int64_t> first_line;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // byte-order mark
    if (!is_valid_utf8(line)) {
      return data_loss_error(what + " file '" + path + "' line " + std::to_string(line_no) +
                             " is not valid UTF-8; convert the file to UTF-8 (e.g. with iconv)");
    }
    // key = the first whitespace-separated field; text = the rest after the separating whitespace.
    size_t pos = 0;
    char32_t cp = 0;
    auto at_space = [&](size_t p) { return decode_utf8_at(line, p, &cp) && is_space(cp); };
    while (pos < line.size() && at_space(pos)) pos += decode_utf8_at(line, pos, &cp);
    if (pos == line.size()) continue;  // blank line
    const size_t key_begin = pos;
    while (pos < line.size() && !at_space(pos)) pos += decode_utf8_at(line, pos, &cp);
    TextEntry entry;
    entry.key = line.substr(key_begin, pos - key_begin);
    entry.text = line.substr(pos);
    entry.line = line_no;
    auto inserted = first_line.emplace(entry.key, line_no);
    if (!inserted.second) {
      return invalid_argument_error(what + " file '" + path + "' line " + std::to_string(line_no) +
                                    ": key '" + entry.key + "' already appeared on line " +
                                    std::to_string(inserted.first->second) + "; keys must be unique");
    }
    entries.push_back(std::move(entry));
  }
  if (in.bad())
    return io_error(what + " file '" + path + "': read failed after line " + std::to_string(line_no));
  if (entries.empty()) {
    return invalid_argument_error(what + " file '" + path + "' has no utterances (it is empty or blank)" +
                                  expect);
  }
  return entries;
}

WerReport score_wer(const std::vector<TextEntry>& refs, const std::vector<TextEntry>& hyps,
                    const WerOptions& options) {
  WerReport report;
  std::unordered_map<std::string, const TextEntry*> hyp_by_key;
  for (const TextEntry& h : hyps) hyp_by_key[h.key] = &h;
  std::unordered_set<std::string> ref_keys;
  std::unordered_map<std::string, size_t> cluster_of_token;  // token -> index into report.clusters
  std::unordered_map<std::string, size_t> cluster_index;     // cluster name -> index
  auto cluster_for = [&](const std::string& token) -> ClusterWer& {
    auto it = cluster_of_token.find(token);
    if (it == cluster_of_token.end()) {
      const std::string name = wenet_token_cluster(token);
      auto c = cluster_index.emplace(name, report.clusters.size());
      if (c.second) report.clusters.push_back(ClusterWer{name, WerCounts{}});
      it = cluster_of_token.emplace(token, c.first->second).first;
    }
    return report.clusters[it->second];
  };

  for (const TextEntry& r : refs) {
    ref_keys.insert(r.key);
    UtteranceWer u;
    u.key = r.key;
    u.ref = tokenize_for_wer(r.text, options);
    auto h = hyp_by_key.find(r.key);
    if (h == hyp_by_key.end()) {
      u.hyp_missing = true;
      report.missing_hyp_keys.push_back(r.key);
    } else {
      u.hyp = tokenize_for_wer(h->second->text, options);
    }
    // WeNet assigns clusters in the order its tokens are first seen: hypothesis, then reference.
    for (const std::string& t : u.hyp) cluster_for(t);
    for (const std::string& t : u.ref) cluster_for(t);
    u.alignment = align_tokens(u.ref, u.hyp);
    for (const AlignedPair& p : u.alignment.pairs) {
      // Reference tokens carry N, C, S and D; an inserted hypothesis token carries I.
      WerCounts& c = cluster_for(p.ref >= 0 ? u.ref[p.ref] : u.hyp[p.hyp]).counts;
      switch (p.op) {
        case EditOp::kCorrect: ++c.n, ++c.c; break;
        case EditOp::kSubstitution: ++c.n, ++c.s; break;
        case EditOp::kDeletion: ++c.n, ++c.d; break;
        case EditOp::kInsertion: ++c.i; break;
      }
    }
    report.total += u.alignment.counts;
    if (u.ref != u.hyp) ++report.sentence_errors;
    report.utterances.push_back(std::move(u));
  }
  for (const TextEntry& h : hyps) {
    if (!ref_keys.count(h.key)) report.unmatched_hyp_keys.push_back(h.key);
  }
  return report;
}

void write_wenet_report(const WerReport& report, std::ostream& out) {
  for (const UtteranceWer& u : report.utterances) {
    out << "\nutt: " << u.key << "\n";
    out << "WER: " << format_percent(u.alignment.counts.wer_percent()) << " % ";
    write_counts(u.alignment.counts, out);
    out << "\n";
    // Each column padded to the wider of its two tokens, then one space.
    std::string lab = "lab: ";
    std::string rec = "rec: ";
    for (const AlignedPair& p : u.alignment.pairs) {
      const std::string& l = p.ref >= 0 ? u.ref[p.ref] : std::string();
      const std::string& r = p.hyp >= 0 ? u.hyp[p.hyp] : std::string();
      const int64_t wl = display_width(l);
      const int64_t wr = display_width(r);
      const int64_t w = std::max(wl, wr);
      lab += l + std::string(static_cast<size_t>(w - wl), ' ') + " ";
      rec += r + std::string(static_cast<size_t>(w - wr), ' ') + " ";
    }
    out << lab << "\n" << rec << "\n\n";
  }
  out << kRule << "\n\n";
  out << "Overall -> " << format_percent(report.total.wer_percent()) << " % ";
  write_counts(report.total, out);
  out << "\n";
  for (const ClusterWer& c : report.clusters) {
    out << c.name << " -> " << format_percent(c.counts.wer_percent()) << " % ";
    write_counts(c.counts, out);
    out << "\n";
  }
  out << "\n" << kRule << "\n";
}

void write_kaldi_report(const WerReport& report, std::ostream& out) {
  const WerCounts& t = report.total;
  const int64_t sentences = static_cast<int64_t>(report.utterances.size());
  out << "%WER " << kaldi_percent(t.errors(), t.n) << " [ " << t.errors() << " / " << t.n << ", " << t.i
      << " ins, " << t.d << " del, " << t.s << " sub ]"
      << (report.missing_hyp_keys.empty() ? "" : " [PARTIAL]") << "\n";
  out << "%SER " << kaldi_percent(report.sentence_errors, sentences) << " [ " << report.sentence_errors
      << " / " << sentences << " ]\n";
  out << "Scored " << sentences << " sentences, " << report.missing_hyp_keys.size()
      << " not present in hyp.\n";
}

Status compute_wer_files(const std::string& ref_path, const std::string& hyp_path, const WerOptions& options,
                         WerFormat format, std::ostream& out, std::ostream& err) {
  if (options.keep_spaces && options.mode != WerMode::kChar) {
    return invalid_argument_error("--keep_spaces applies to character mode only; add --mode char or drop it");
  }
  ASSIGN_OR_RETURN(std::vector<TextEntry> refs, read_kaldi_text(ref_path, "reference"));
  ASSIGN_OR_RETURN(std::vector<TextEntry> hyps, read_kaldi_text(hyp_path, "hypothesis"));
  const WerReport report = score_wer(refs, hyps, options);
  if (!report.missing_hyp_keys.empty()) {
    err << "moe-asr compute_wer: warning: " << report.missing_hyp_keys.size() << " of " << refs.size()
        << " reference utterances have no hypothesis in '" << hyp_path
        << "'; they are scored as all deletions: " << key_list(report.missing_hyp_keys) << "\n";
  }
  if (!report.unmatched_hyp_keys.empty()) {
    err << "moe-asr compute_wer: warning: " << report.unmatched_hyp_keys.size() << " of " << hyps.size()
        << " hypotheses have no reference in '" << ref_path
        << "' and are ignored: " << key_list(report.unmatched_hyp_keys) << "\n";
  }
  if (format == WerFormat::kWenet || format == WerFormat::kBoth) write_wenet_report(report, out);
  if (format == WerFormat::kKaldi || format == WerFormat::kBoth) write_kaldi_report(report, out);
  out.flush();
  if (!out) return io_error("compute_wer: writing the report failed (disk full or a closed pipe?)");
  return Status::ok_status();
}

}  // namespace moeasr
